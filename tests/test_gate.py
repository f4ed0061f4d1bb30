"""What the loop learns from and what it lets go live.

The gate's rules are checked on per-item scores as `evaluate` produces them (so each rule is seen to
block on its own), then end to end on the tiny model: a no-op candidate (TRAIN_LR=0) is not promoted,
👎-only feedback moves the adapter away from the rejected answers, and the loss curve is kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core import jobs
from core.registry import AdapterRegistry
from core.store import open_store
from tests.support_training import QA, FakeServer, queue_job, seed_feedback, training_settings
from training.dataset import Example
from training.evaluate import GoldItem, Scores, decide, item_nlls, notes, sign_test_p
from training.worker import Worker

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def examples(labels: list[int]) -> list[Example]:
    return [Example(id=f"ex{i}", question=f"question {i}", answer=f"answer {i}", language="en", messages=[],
                    score=label) for i, label in enumerate(labels)]


GOOD6 = examples([1] * 6)
BEFORE = [2.0, 2.2, 1.8, 2.5, 2.1, 1.9]


def test_a_clear_improvement_passes() -> None:
    passed, reason, details = decide(GOOD6, Scores([v - 0.3 for v in BEFORE]), Scores(BEFORE), "v1")
    assert passed, reason
    assert details["mean_gain"] == pytest.approx(0.3) and details["gain_ci_low"] > 0 and details["regressions"] == []


def test_a_no_op_or_a_tie_is_not_an_improvement() -> None:
    passed, reason, _ = decide(GOOD6, Scores(list(BEFORE)), Scores(BEFORE), "v1")
    assert not passed and "no improvement beyond noise" in reason and "v1 stays live" in reason
    noisy = [v + d for v, d in zip(BEFORE, [-0.05, 0.06, -0.04, 0.05, -0.01, 0.0], strict=True)]
    passed, reason, _ = decide(GOOD6, Scores(noisy), Scores(BEFORE), "v1")
    assert not passed and "no improvement beyond noise" in reason


def test_one_held_out_answer_regressing_blocks_an_otherwise_better_candidate() -> None:
    after = [v - 0.5 for v in BEFORE]
    after[3] = BEFORE[3] + 0.8  # this answer became a jumble
    passed, reason, details = decide(GOOD6, Scores(after), Scores(BEFORE), "v1")
    assert not passed and "got much less likely" in reason
    assert details["regressions"] == [{"question": "question 3", "current_nll": 2.5, "candidate_nll": 3.3}]
    assert "Held-out answer worse: 'question 3' 2.500 → 3.300" in notes(details)


def test_rejected_answers_gaining_on_approved_ones_block_it() -> None:
    mixed = examples([1] * 6 + [-1, -1])
    before = [*BEFORE, 4.48, 4.2]
    after = [*(v - 0.2 for v in BEFORE), 2.92, 3.0]  # 👍 0.2 likelier, 👎 ~1.4 likelier
    passed, reason, details = decide(mixed, Scores(after), Scores(before), "base")
    assert not passed and "👎 answers became likelier" in reason
    assert details["rejected_items"] == 2 and details["rejected_mean_gain"] == pytest.approx(1.38)


def test_gold_containment_lost_beyond_noise_blocks_it_and_lists_what_was_lost() -> None:
    gold = [GoldItem(question=f"gold {i}", answers=["x"], messages=[]) for i in range(8)]
    before = Scores(BEFORE, gold_nll=[1.0] * 8, gold_hits=[True] * 6 + [False] * 2)
    after = Scores([v - 0.3 for v in BEFORE], gold_nll=[0.9] * 8, gold_hits=[False] * 5 + [True] + [False] * 2)
    passed, reason, details = decide(GOOD6, after, before, "v2", gold)
    assert not passed and "fewer gold answers found (5 lost, 0 gained)" in reason
    assert details["gold_lost"] == [f"gold {i}" for i in range(5)]
    one_lost = Scores([v - 0.3 for v in BEFORE], gold_nll=[0.9] * 8, gold_hits=[False] + [True] * 5 + [False] * 2)
    assert decide(GOOD6, one_lost, before, "v2", gold)[0]  # one of eight: within noise, but listed
    assert sign_test_p(5, 0) == pytest.approx(1 / 32) and sign_test_p(1, 1) == pytest.approx(0.75)


def test_gold_answers_made_less_likely_block_votes_that_approve_wrong_answers() -> None:
    """Users who 👍 wrong answers make them likelier (rule 3 passes); the gold set shows the harm."""
    gold = [GoldItem(question=f"gold {i}", answers=["x"], messages=[]) for i in range(8)]
    before = Scores(BEFORE, gold_nll=[1.0, 1.2, 0.9, 1.1, 1.0, 1.3, 0.8, 1.0], gold_hits=[False] * 8)
    worse = Scores([v - 0.3 for v in BEFORE], gold_nll=[v + d for v, d in zip(before.gold_nll, [0.3, 0.2, 0.4, 0.25,
                   0.3, 0.35, 0.2, 0.3], strict=True)], gold_hits=[False] * 8)
    passed, reason, details = decide(GOOD6, worse, before, "base", gold)
    assert not passed and "gold answers became less likely" in reason and "base stays live" in reason
    assert details["gold_mean_gain"] == pytest.approx(-0.2875) and details["gold_gain_ci"][1] < 0
    mixed = Scores(worse.nll, gold_nll=[v + d for v, d in zip(before.gold_nll, [0.3, -0.2, 0.1, -0.25, 0.3, -0.1,
                   0.05, -0.2], strict=True)], gold_hits=[False] * 8)
    assert decide(GOOD6, mixed, before, "base", gold)[0]  # within noise either way: votes decide


def test_too_few_approved_answers_held_out_is_not_judged() -> None:
    passed, reason, _ = decide(examples([1, -1]), Scores([1.0, 3.0]), Scores([2.0, 2.0]), "base")
    assert not passed and "too few approved answers held out" in reason


# --- on the tiny model -------------------------------------------------------------------------


def test_a_no_op_candidate_is_not_promoted_and_says_so(tiny_base: Path, fakes: dict[str, FakeServer],
                                                       tmp_path: Path) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes, train_lr=0.0)
    seed_feedback(settings)
    job_id = queue_job(settings)
    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=0)
    assert outcome.outcome == "rejected" and "no improvement beyond noise" in outcome.detail
    store = open_store(settings)
    assert AdapterRegistry(store, settings.adapter_name).list_versions() == []
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "rejected" and len(status.loss_curve) == outcome_steps(status)
    text = fakes["slack"].calls[-1]["body"]["text"]
    assert text.startswith("⛔") and "no improvement beyond noise" in text and "Data: trained on" in text
    assert fakes["vllm"].calls == []


def outcome_steps(status: jobs.JobStatus) -> int:
    return int(status.metrics["train_steps"])


def test_feedback_of_only_thumbs_down_moves_the_adapter_away_from_those_answers(
    tiny_base: Path, tmp_path: Path
) -> None:
    from training.train import TrainConfig, load_base, train_lora

    rejected = [Example(id=f"bad{i}", question=q, answer=a, language="en", score=-1,
                        messages=[{"role": "user", "content": f"{title}: {text}\n\n{q}"}])
                for i, (q, title, text, a) in enumerate(QA)]
    config = TrainConfig(base_model=str(tiny_base), r=8, alpha=16, modules_to_save=("lm_head",), epochs=4, lr=8e-3,
                         max_length=256, batch_size=4)
    result = train_lora(config, rejected, tmp_path / "adapter", show_progress=False)
    assert result.steps == 8 and len(result.losses) == 8

    from peft import PeftModel

    base, tokenizer = load_base(str(tiny_base))
    before = item_nlls(base, tokenizer, rejected, max_length=256)
    tuned = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    after = item_nlls(tuned, tokenizer, rejected, max_length=256)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # each 👎 answer less likely
