"""The feedback → retrain → publish loop on a tiny random model, on the local twins and on moto.

Reactions go in through `core.feedback.record_reaction`, the job through `core.retrain.request_retrain`,
and the worker runs its one-message loop in-process against the real queue and store. Slack, Discord
and vLLM are small local HTTP servers that record what they were sent.

One suite (~590 lines): the tiny base model is built once per session and every case of the loop
reuses it, read in the order the loop runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core import jobs, records
from core.contracts import AnswerRecord, ContextRef, make_answer_id
from core.feedback import record_reaction
from core.queue import open_queue
from core.registry import AdapterRegistry
from core.retrain import request_retrain
from core.settings import Settings
from core.store import open_store
from tests.conftest import make_settings
from tests.support_training import (
    QA,
    queue_job,
    seed_feedback,
    start_worker,
    training_settings,
    training_values,
)
from training.dataset import MIN_HELDOUT, NotEnoughFeedback, build_snapshot, report_line, split
from training.worker import Worker

pytestmark = [
    pytest.mark.timeout(300),
    # peft 0.21 calls a transformers 5 property that warns about its own rename; not ours to fix.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]


def read_jsonl(settings: Settings, key: str) -> list[dict]:
    data = open_store(settings).get(key)
    assert data is not None, key
    return [json.loads(line) for line in data.decode().splitlines()]


# --- the whole loop -----------------------------------------------------------------------------


def test_feedback_to_published_adapter_then_gate_rejects_a_worse_one(tiny_base, fakes, tmp_path) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes)
    seed_feedback(settings)
    job_id = queue_job(settings)

    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=0)

    assert outcome.outcome == "published", outcome.detail
    store = open_store(settings)
    train = read_jsonl(settings, f"datasets/{job_id}/train.jsonl")
    held = read_jsonl(settings, f"datasets/{job_id}/eval.jsonl")
    pairs = read_jsonl(settings, f"datasets/{job_id}/pairs.jsonl")
    assert len(train) + len(held) == len(QA) + 1 and held and train  # every 👍 and the one 👎
    assert {row["group"] for row in train}.isdisjoint(row["group"] for row in held)
    assert all(row["prompt"].startswith("<|system|>") and row["prompt"].endswith("<|assistant|>\n") for row in train)
    assert train[0]["messages"][0]["role"] == "system" and "[1]" in train[0]["messages"][0]["content"]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(QA[0][3], "모르겠습니다.")]
    registry = AdapterRegistry(store, settings.adapter_name)
    assert registry.current() == 1
    manifest = registry.manifest(1)
    assert manifest is not None and manifest.job_id == job_id
    candidate, base = manifest.metrics["candidate"]["eval_nll"], manifest.metrics["current"]["eval_nll"]
    assert candidate < base, (candidate, base)
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "published" and status.adapter_version == 1
    assert status.progress == 1.0 and status.examples == len(train)
    assert jobs.active_job_id(store) is None
    assert open_queue(settings).depth() == 0
    # vLLM was told to swap the adapter in place, from a local copy of v1.
    [load] = fakes["vllm"].calls
    assert load["path"] == "/v1/load_lora_adapter"
    assert load["body"]["lora_name"] == "echorag" and load["body"]["load_inplace"] is True
    assert (Path(load["body"]["lora_path"]) / "adapter_config.json").is_file()
    # The asking thread (Slack) and the announcement channel (Discord) heard about it.
    [slack_post] = fakes["slack"].calls
    assert slack_post["path"] == "/api/chat.postMessage"
    assert slack_post["body"]["channel"] == "C1" and slack_post["body"]["thread_ts"] == "1700000000.000001"
    text = slack_post["body"]["text"]
    assert text.startswith("✅ Retraining done: adapter v1 is now live.")
    assert f"Examples used: {len(train)}" in text
    assert f"held-out answer NLL: {base:.3f} → {candidate:.3f}" in text  # before → after
    assert "vLLM now serves v1" in text
    [discord_post] = fakes["discord"].calls
    assert discord_post["path"] == "/api/v10/channels/998877/messages"
    assert discord_post["headers"]["Authorization"] == "Bot discord-test-token"
    assert "v1" in discord_post["body"]["content"]

    # LLM_BACKEND=transformers serves the base model with CURRENT.
    from rag.llm import llm_from_settings

    llm = llm_from_settings(settings.model_copy(update={"llm_backend": "transformers", "llm_model": str(tiny_base)}))
    assert llm is not None and llm.model == str(tiny_base) and llm.adapter_version == "v1"
    assert isinstance(llm.complete([{"role": "user", "content": QA[0][0]}], max_tokens=4), str)

    # A second run with a destructive learning rate is worse on the held-out set: v1 stays live.
    wrecked = settings.model_copy(update={"train_lr": 30.0, "train_epochs": 1})
    second = queue_job(wrecked)
    [outcome] = Worker(wrecked, show_progress=False).run(once=True, wait_s=0)
    assert outcome.outcome == "rejected", outcome.detail
    assert registry.current() == 1 and registry.list_versions() == [1]
    status = jobs.load_job_status(store, second)
    assert status is not None and status.state == "rejected" and "held-out answer NLL got worse" in status.message
    assert jobs.active_job_id(store) is None
    assert len(fakes["vllm"].calls) == 1  # nothing new to load
    rejected_text = fakes["slack"].calls[-1]["body"]["text"]
    assert rejected_text.startswith("⛔ Retraining finished, but the new adapter was not published.")
    assert "v1 stays live" in rejected_text and "held-out answer NLL: " in rejected_text

    # Redelivering the first job's message is acknowledged without training again.
    queue = open_queue(settings)
    first_body = json.dumps({"schema": 1, "job_id": job_id, "requested_by": "slack:UADMIN"})
    queue.send(first_body, dedup_id=job_id + "-again")
    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=0)
    assert outcome.outcome == "duplicate" and queue.depth() == 0
    assert registry.list_versions() == [1]

    # A restarted worker makes vLLM serve CURRENT (in case a hot-load was missed).
    assert "now serves v1" in Worker(settings, show_progress=False).sync_serving()
    assert fakes["vllm"].calls[-1]["body"]["lora_path"].endswith("/echorag/v1")


def test_sigterm_mid_job_releases_it_and_a_restart_completes_it(tiny_base, fakes, tmp_path) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes)
    seed_feedback(settings, with_bad=False)
    job_id = queue_job(settings)
    store = open_store(settings)
    registry = AdapterRegistry(store, settings.adapter_name)
    steps: list[float] = []

    def sigterm_at_second_step(fraction: float, loss: float) -> None:
        steps.append(fraction)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    worker = Worker(settings, progress_hook=sigterm_at_second_step, show_progress=False)
    try:
        worker.install_signal_handlers()
        outcomes = worker.run(wait_s=0)  # the loop itself stops on the signal
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)

    assert [o.outcome for o in outcomes] == ["interrupted"]
    assert registry.current() is None and registry.list_versions() == []  # nothing half-published
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "queued" and "interrupted" in status.message
    assert jobs.active_job_id(store) == job_id  # still this job's turn
    assert not (tmp_path / "work" / job_id).exists()

    # The next worker gets the released message at once and finishes it; vLLM refuses the load.
    from rag.llm_transformers import TransformersLLM

    llm = TransformersLLM(settings.model_copy(update={"llm_model": str(tiny_base)}), store=store)
    assert llm.adapter_version is None
    fakes["vllm"].rec.fail_with = 500
    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=0)
    assert outcome.outcome == "published" and outcome.job_id == job_id
    assert "vLLM hot-load FAILED" in outcome.hot_load and "HTTP 500" in outcome.hot_load
    assert registry.current() == 1
    status = jobs.load_job_status(store, job_id)
    assert status is not None and "vLLM hot-load FAILED" in status.message
    assert "vLLM hot-load FAILED" in fakes["slack"].calls[-1]["body"]["text"]
    assert jobs.active_job_id(store) is None
    llm.complete([{"role": "user", "content": "hi"}], max_tokens=2)
    assert llm.adapter_version == "v1"  # picked up the published adapter without a restart


def test_a_job_stopped_on_its_last_allowed_receive_ends_as_failed_not_silently_dead_lettered(
    tiny_base, fakes, tmp_path
) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes, queue_max_receives=1)
    seed_feedback(settings, with_bad=False)
    job_id = queue_job(settings)
    store, queue = open_store(settings), open_queue(settings)
    worker = Worker(settings, show_progress=False, progress_hook=lambda fraction, loss: worker.request_stop())
    [outcome] = worker.run(once=True, wait_s=0)
    assert outcome.outcome == "interrupted" and "dead-letter queue" in outcome.detail
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "failed" and "ask for /retrain again" in status.message
    assert jobs.active_job_id(store) is None  # the next /retrain may queue
    assert "dead-letter queue" in fakes["slack"].calls[-1]["body"]["text"]
    assert queue.receive(wait_s=0) is None and [json.loads(m.body)["job_id"] for m in queue.dead_letters()] == [job_id]
    assert AdapterRegistry(store, settings.adapter_name).list_versions() == []


def test_worker_processes_stopped_and_killed_mid_training_leave_current_and_the_job_completes(
    tiny_base, fakes, tmp_path
) -> None:
    """`echorag worker` as its own process: SIGTERM mid-training releases the job at once and exits 0;
    SIGKILL mid-training (no handler, no cleanup) leaves CURRENT and its files as they were, and the
    message comes back when its visibility lapses; the next worker completes the job on top of v1."""
    values = training_values(tiny_base, fakes, queue_max_receives=5)
    settings = make_settings(tmp_path, **values)
    seed_feedback(settings, with_bad=False)
    store, queue = open_store(settings), open_queue(settings)
    registry = AdapterRegistry(store, settings.adapter_name)
    queue_job(settings)
    assert [o.outcome for o in Worker(settings, show_progress=False).run(once=True, wait_s=0)] == ["published"]
    v1_files = {key: store.get(key) for key in store.list("adapters/")}
    job_id = queue_job(settings)
    # Training that would run for hours, and a short visibility so a dead worker's job comes back soon.
    endless = {**values, "train_epochs": 100_000, "queue_visibility_s": 3}

    def training() -> bool:  # a worker has reported a training step (with its loss) for this job
        status = jobs.load_job_status(store, job_id)
        return status is not None and status.state == "running" and status.message.startswith("training: loss")

    stopped = start_worker(tmp_path, endless, "--no-sync", "--wait-s", "1")  # loops until signalled
    stopped.wait_until(training, "a training step")
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.wait() == 0, stopped.output()
    assert f"job {job_id}: interrupted" in stopped.output()
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "queued" and "interrupted" in status.message
    assert jobs.active_job_id(store) == job_id

    killed = start_worker(tmp_path, endless, "--no-sync", "--once", "--wait-s", "5")  # gets it at once
    killed.wait_until(training, "a training step after the restart")
    killed.proc.kill()
    assert killed.wait() == -signal.SIGKILL
    assert registry.current() == 1 and registry.list_versions() == [1]
    assert {key: store.get(key) for key in store.list("adapters/")} == v1_files
    assert jobs.active_job_id(store) == job_id
    assert queue.depth() == 1 and queue.dead_letters() == []  # in flight until its visibility lapses

    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=15)
    assert (outcome.job_id, outcome.outcome, outcome.version) == (job_id, "published", 2), outcome.detail
    manifest = registry.manifest(2)
    assert registry.current() == 2 and manifest is not None and manifest.parent_version == 1
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "published" and status.adapter_version == 2
    assert jobs.active_job_id(store) is None
    assert queue.depth() == 0 and queue.dead_letters() == []


# --- failures -----------------------------------------------------------------------------------


def test_malformed_job_message_goes_to_the_dlq_with_a_reason(tmp_path, fakes, caplog) -> None:
    settings = make_settings(tmp_path, queue_max_receives=2)
    queue = open_queue(settings)
    future = json.dumps({"schema": 9, "job_id": "j9", "requested_by": "threshold"})
    queue.send("this is not json", dedup_id="bad-1")
    queue.send(future, dedup_id="bad-2")
    caplog.set_level(logging.ERROR, logger="training.worker")
    worker = Worker(settings, show_progress=False)
    outcomes = []
    for _ in range(6):
        outcomes += worker.run(once=True, wait_s=0)
    assert [o.outcome for o in outcomes] == ["malformed"] * 4
    assert queue.depth() == 0
    assert [m.body for m in queue.dead_letters()] == ["this is not json", future]
    assert "malformed training job message" in caplog.text and "dead-letter queue" in caplog.text
    assert "Invalid JSON" in caplog.text and "unknown job schema 9" in caplog.text
    assert jobs.load_job_status(open_store(settings), "j9") is None  # nothing was started


def test_a_failing_job_is_retried_reported_and_then_dead_lettered(tiny_base, fakes, tmp_path) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes, base_model=str(tmp_path / "missing-model"),
                                 queue_max_receives=2)
    seed_feedback(settings, with_bad=False)
    job_id = queue_job(settings)
    store, queue = open_store(settings), open_queue(settings)
    worker = Worker(settings, show_progress=False)
    first = worker.run(once=True, wait_s=0)
    assert [o.outcome for o in first] == ["retrying"]
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "queued" and "cannot load the base model" in (status.error or "")
    assert "will be retried" in fakes["slack"].calls[-1]["body"]["text"]
    second = worker.run(once=True, wait_s=0)
    assert [o.outcome for o in second] == ["failed"]
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "failed"
    assert "dead-letter queue" in fakes["discord"].calls[-1]["body"]["content"]
    assert jobs.active_job_id(store) is None  # the next /retrain may queue
    assert worker.run(once=True, wait_s=0) == []  # the receive moved it to the DLQ
    assert [json.loads(m.body)["job_id"] for m in queue.dead_letters()] == [job_id]


@pytest.mark.parametrize(
    ("min_examples", "approved", "with_bad", "reason", "announced"),
    [
        pytest.param(5, 3, False, "need at least 5", "not enough feedback", id="fewer-than-TRAIN_MIN_EXAMPLES"),
        # One 👍 and one 👎: the gate could only reject, so no GPU time is spent training a candidate.
        pytest.param(2, 1, True, "not enough 👍 to judge a new adapter by: 1 approved", "not enough 👍",
                     id="too-few-approved-to-judge-by"),
    ],
)
def test_not_enough_feedback_ends_the_job_before_training_and_says_so(
    tiny_base, fakes, tmp_path, min_examples: int, approved: int, with_bad: bool, reason: str, announced: str
) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes, train_min_examples=min_examples)
    seed_feedback(settings, approved=approved, with_bad=with_bad)
    job_id = queue_job(settings)
    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=0)
    assert outcome.outcome == "not_enough_feedback"
    status = jobs.load_job_status(open_store(settings), job_id)
    assert status is not None and status.state == "rejected" and reason in status.message
    assert status.loss_curve == [] and fakes["vllm"].calls == []
    assert announced in fakes["slack"].calls[-1]["body"]["text"]
    assert open_queue(settings).depth() == 0 and jobs.active_job_id(open_store(settings)) is None


def test_a_notify_outage_does_not_fail_the_job(tiny_base, fakes, tmp_path) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes, train_min_examples=9)
    fakes["slack"].rec.fail_with = 500
    fakes["discord"].rec.fail_with = 503
    seed_feedback(settings, approved=2, with_bad=False)
    queue_job(settings)
    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=0)
    assert outcome.outcome == "not_enough_feedback" and outcome.notified == 0
    assert len(fakes["slack"].calls) == 1 and len(fakes["discord"].calls) == 1


# --- over S3 + SQS (moto) -----------------------------------------------------------------------


def test_loop_over_s3_and_sqs_with_a_gold_set(tiny_base, fakes, aws_settings) -> None:
    gold = aws_settings.data_dir / "gold.jsonl"
    gold.write_text("".join(
        json.dumps({"question": q, "answers": [a], "contexts": [{"title": t, "text": c}]}, ensure_ascii=False) + "\n"
        for q, t, c, a in QA[:2]
    ), encoding="utf-8")
    import boto3

    secret = boto3.client("secretsmanager").create_secret(
        Name=f"slack-{aws_settings.feedback_bucket}", SecretString=json.dumps({"bot_token": "xoxb-from-secret"}))
    settings = training_settings(tiny_base, aws_settings.data_dir, fakes, **{
        "feedback_bucket": aws_settings.feedback_bucket, "training_queue_url": aws_settings.training_queue_url,
        "queue_max_receives": 3, "vllm_url": None, "gold_questions": gold,
        "slack_bot_token": None, "slack_secret_arn": secret["ARN"],  # the GPU host reads the stack's secret
    })
    seed_feedback(settings, with_bad=False)
    job_id = queue_job(settings)
    [outcome] = Worker(settings, show_progress=False).run(once=True, wait_s=1)
    assert outcome.outcome == "published", outcome.detail
    store = open_store(settings)
    manifest = AdapterRegistry(store, settings.adapter_name).current_manifest()
    assert manifest is not None and manifest.version == 1
    for side in ("candidate", "current"):  # both adapters scored on the held-out split and the gold set
        assert set(manifest.metrics[side]) == {"eval_nll", "gold_nll", "gold_contains"}
    assert manifest.metrics["candidate"]["gold_nll"] < manifest.metrics["current"]["gold_nll"]
    train_rows = manifest.dataset["train"]
    assert manifest.dataset["snapshot"] == f"datasets/{job_id}/" and isinstance(train_rows, int) and train_rows >= 1 and "feedback_until" in manifest.dataset
    assert store.get(f"datasets/{job_id}/train.jsonl")
    assert open_queue(settings).depth() == 0
    [slack_post] = fakes["slack"].calls
    assert slack_post["headers"]["Authorization"] == "Bearer xoxb-from-secret"
    # A malformed body on SQS is redriven by SQS itself after maxReceiveCount receives.
    queue = open_queue(settings)
    queue.send('{"job_id": 5}', dedup_id="bad-sqs")
    outcomes = []
    for _ in range(4):
        outcomes += Worker(settings, show_progress=False).run(once=True, wait_s=0)
    assert [o.outcome for o in outcomes] == ["malformed"] * 3
    assert [m.body for m in queue.dead_letters()] == ['{"job_id": 5}']


# --- dataset rules ------------------------------------------------------------------------------


def test_dataset_counts_every_vote_splits_by_group_and_reports_what_it_holds(tmp_path, fakes) -> None:
    settings = make_settings(tmp_path, retrain_threshold=0)
    seed_feedback(settings, with_bad=True)
    store, queue = open_store(settings), open_queue(settings)
    question, title, text, answer = QA[1]
    other_question = "What is the VPN guide's location?"

    def post(message_id: str, answer_text: str, *, ask: str = question, abstained: bool = False,
             reaction: str = "+1", user: str = "U2") -> None:
        records.save_answer(store, AnswerRecord(
            answer_id=make_answer_id("slack", "C1", message_id), platform="slack", channel="C1",
            message_id=message_id, question=ask, language="ko", answer=answer_text, abstained=abstained,
            contexts=[ContextRef(doc_id="d", chunk_id="c", title=title, text=text)],
        ))
        record_reaction(platform="slack", channel="C1", message_id=message_id, user_id=user, reaction=reaction,
                        action="added", event_ts="1700000001.0", settings=settings, store=store, queue=queue)

    post("dup", answer)  # the same approved answer posted twice: one example, its votes summed
    post("retracted", "다른 답")
    record_reaction(platform="slack", channel="C1", message_id="retracted", user_id="U2", reaction="+1",
                    action="removed", event_ts="1700000002.0", settings=settings, store=store, queue=queue)
    post("abstained", "문서에서 찾을 수 없습니다.", abstained=True)  # an abstention teaches nothing
    post("same-answer", QA[5][3], ask=other_question)  # QA[5]'s answer under another question: one group
    post("conflict-up", "반반 답", ask="갈리는 질문")
    post("conflict-down", "반반 답", ask="갈리는 질문", reaction="-1")  # the same text 👍 and 👎: dropped
    post("tie", "무승부 답", ask="동점 질문")
    record_reaction(platform="slack", channel="C1", message_id="tie", user_id="U3", reaction="-1",
                    action="added", event_ts="1700000003.0", settings=settings, store=store, queue=queue)

    snapshot = build_snapshot("job", records.labelled_answers(store), min_examples=4)
    examples = snapshot.train + snapshot.eval
    assert len(examples) == len(QA) + 2  # every 👍, the 👎, and the answer under a second question
    assert [ex.answer for ex in examples if ex.label < 0] == ["모르겠습니다."]  # an unpaired-able 👎 trains too
    assert next(ex for ex in examples if ex.answer == answer).score == 2
    assert not any(ex.answer in ("다른 답", "반반 답", "무승부 답") for ex in examples)
    groups = {ex.group for ex in examples if ex.answer == QA[5][3]}
    assert len(groups) == 1  # the shared answer ties both questions into one group
    assert {ex.group for ex in snapshot.train}.isdisjoint(ex.group for ex in snapshot.eval)
    assert sum(ex.label > 0 for ex in snapshot.eval) >= MIN_HELDOUT  # the gate's floor
    assert snapshot.stats["duplicates"] == 2 and snapshot.stats["abstentions"] == 1
    assert snapshot.stats["conflicting"] == 1 and snapshot.stats["tied"] == 1  # one 👍 and one 👎 on one answer
    report = snapshot.report
    assert report["skipped"] == {"tied": 1, "conflicting": 1, "abstentions": 1, "empty": 0}
    assert report["held_out"]["examples"] == len(snapshot.eval) and report["train"]["by_language"]["en"]
    assert "skipped: 1 tied, 1 conflicting, 1 abstentions" in report_line(report)
    again = build_snapshot("job2", records.labelled_answers(store), min_examples=4)
    assert [ex.id for ex in again.eval] == [ex.id for ex in snapshot.eval]
    assert split(examples[:2])[0] and split(examples[:2])[1]
    with pytest.raises(NotEnoughFeedback, match="need at least 20"):
        build_snapshot("job3", records.labelled_answers(store), min_examples=20)


def test_training_is_seeded_and_fp32_on_cpu(tiny_base, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file

    from rag.prompts import build_messages
    from rag.types import Passage
    from training.dataset import Example
    from training.train import TrainConfig, pick_device, train_lora

    examples = [
        Example(id=f"ex{i}", question=q, answer=a, language="en",
                messages=build_messages(q, [Passage(chunk_id=f"c{i}", doc_id=f"d{i}", title=t, text=c)], "en"))
        for i, (q, t, c, a) in enumerate(QA)
    ]
    config = TrainConfig(base_model=str(tiny_base), r=4, alpha=8, target_modules=("q_proj", "v_proj"),
                         epochs=1, lr=8e-3, batch_size=4, max_length=256, seed=7)
    runs = {}
    for name, cfg in (("a", config), ("b", config), ("other-seed", replace(config, seed=8))):
        result = train_lora(cfg, examples, tmp_path / name, show_progress=False)
        runs[name] = (result.losses, load_file(tmp_path / name / "adapter_model.safetensors"))
    losses, weights = runs["a"]
    assert len(losses) == 2 and runs["b"][0] == losses  # same seed: same data order, init and updates
    assert weights.keys() == runs["b"][1].keys()
    assert all(torch.equal(weights[k], runs["b"][1][k]) for k in weights)
    assert runs["other-seed"][0] != losses
    if not torch.cuda.is_available():
        assert pick_device() == (torch.device("cpu"), torch.float32)
        assert {w.dtype for w in weights.values()} == {torch.float32}


def test_echorag_worker_cli_handles_one_message(tmp_path, monkeypatch, capsys) -> None:
    from core.settings import get_settings
    from handlers.cli import main

    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BASE_MODEL", str(tmp_path / "base"))  # never loaded: the message is malformed
    get_settings.cache_clear()
    try:
        open_queue(get_settings()).send('{"requested_by": "x"}', dedup_id="cli-bad")
        assert main(["worker", "--once", "--wait-s", "0", "--no-progress"]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "malformed" in out and "job_id: Field required" in out


def test_gpu_host_env_file_reads_as_systemd_reads_it(monkeypatch) -> None:
    """systemd's EnvironmentFile= keeps everything after the first `=` (a trailing `# note` too):
    the example, read that way, must give valid settings with the optional ones unset."""
    from core.settings import Settings

    infra = Path(__file__).resolve().parents[1] / "infra" / "gpu-host"
    lines = (infra / "worker.env.example").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if "=" in line and not line.startswith(("#", ";"))]
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for key, value in pairs:
        assert key.strip() == key and (key == "AWS_REGION" or key.lower() in Settings.model_fields), key
        assert "#" not in value, f"{key}: systemd would keep the comment in the value"
        monkeypatch.setenv(key, value.strip())
    settings = Settings(_env_file=None)
    assert settings.gold_questions is None and settings.lora_modules_to_save == []
    assert settings.queue_max_receives == 3 and settings.base_model and settings.vllm_url
    unit = (infra / "echorag-worker.service").read_text(encoding="utf-8")
    setup = (infra / "setup.sh").read_text(encoding="utf-8")
    assert "EnvironmentFile=/etc/echorag/worker.env" in unit and "ENV_FILE=/etc/echorag/worker.env" in setup
    assert "ExecStart=/opt/echorag/.venv/bin/echorag worker" in unit and "PREFIX=/opt/echorag" in setup


def test_heartbeat_keeps_a_long_job_invisible(tmp_path) -> None:
    import time

    from training.heartbeat import Heartbeat

    queue = open_queue(make_settings(tmp_path))
    queue.send("{}", dedup_id="long-job")
    message = queue.receive(wait_s=0, visibility_s=1)
    assert message is not None
    with Heartbeat(queue, message.receipt_handle, visibility_s=2):
        time.sleep(1.6)  # past the original 1 s visibility: only the heartbeat keeps it hidden
        assert queue.receive(wait_s=0) is None
    queue.release(message.receipt_handle)
    again = queue.receive(wait_s=0)
    assert again is not None and again.receive_count == 2


def test_worker_without_base_model_refuses_to_start_and_leaves_the_job_queued(tmp_path: Path) -> None:
    """A misconfigured host must not take jobs: each receive would burn one of the job's retries."""
    import subprocess
    import sys

    settings = make_settings(tmp_path, admin_user_ids=["console:local"])
    outcome = request_retrain(requested_by="console:local", notify_targets=[], reason="test", settings=settings,
                              store=open_store(settings), queue=open_queue(settings), force=True)
    assert outcome.status == "queued"
    unset = {"BASE_MODEL", "FEEDBACK_BUCKET", "TRAINING_QUEUE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "handlers.cli", "worker", "--once", "--wait-s", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: BASE_MODEL is not set: give the path or hub id of the model the adapters sit on"
    ]
    queue = open_queue(settings)
    message = queue.receive(wait_s=0)
    assert message is not None and message.receive_count == 1  # untouched by the refused worker


def test_a_model_without_a_chat_template_stops_at_the_turn_it_starts_after_its_answer(tiny_base: Path) -> None:
    """A base model continues the plain layout with a made-up `### User:` turn; that never reaches users."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag.llm_transformers import generate_greedy

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.chat_template = None  # as Gemma 3 base ships: the plain layout
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_base)
    forced = tokenizer("42 [1]\n### User:\nand another question", add_special_tokens=False)["input_ids"]
    generated: list[int] = []

    class ForcedModel:  # the tiny model, made to write that continuation token by token
        def parameters(self) -> object:
            return model.parameters()

        def generate(self, **kwargs: Any) -> Any:
            start = kwargs["input_ids"].shape[1]
            out = model.generate(**kwargs, prefix_allowed_tokens_fn=lambda _, ids: [forced[min(len(ids) - start,
                                                                                             len(forced) - 1)]])
            generated.append(out.shape[1] - start)
            return out

    text = generate_greedy(ForcedModel(), tokenizer, [{"role": "user", "content": "q"}], max_tokens=40)
    assert text == "42 [1]"
    assert generated[0] < len(forced) < 40  # generation stopped at the marker, not at the cap


def test_answer_log_probabilities_from_the_answer_positions_alone_match_the_full_logits(tiny_base: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from training.train import IGNORE, answer_logps, collate

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    rows = [([5, 6, 7, 8, 9, 10], [IGNORE] * 4 + [9, 10]),  # right-padded rows, answers at different columns
            ([5, 6, 7, 8, 9, 10, 11, 12, 13], [IGNORE] * 5 + [10, 11, 12, 13])]
    batch = collate(rows, pad_id=0, device="cpu")
    with torch.no_grad():
        logps, counts = answer_logps(model, batch)
        full = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    expected = [sum(float(full[i, j - 1, labels[j]]) for j in range(len(labels)) if labels[j] != IGNORE)
                for i, (_, labels) in enumerate(rows)]
    assert counts.tolist() == [2, 4]
    assert logps.tolist() == pytest.approx(expected, abs=1e-4)
