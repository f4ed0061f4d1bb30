"""`echorag status | retrain | feedback export | adapters …` run through the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import records
from core.contracts import AdapterManifest, AnswerRecord, ContextRef, make_answer_id
from core.feedback import record_reaction
from core.queue import open_queue
from core.registry import AdapterRegistry
from core.settings import Settings, get_settings
from core.store import open_store
from handlers.cli import main


@pytest.fixture
def settings(backend_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI reads its settings from the environment, as in production."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {
        "DATA_DIR": str(backend_settings.data_dir),
        "FEEDBACK_BUCKET": backend_settings.feedback_bucket,
        "TRAINING_QUEUE_URL": backend_settings.training_queue_url,
        "RETRAIN_THRESHOLD": "50",
    }
    for name, value in env.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def seed(settings: Settings) -> list[str]:
    """Two answers, a 👍 on one and a 👎 on the other, as the chat adapters would record them."""
    store, queue = open_store(settings), open_queue(settings)
    ids = []
    for n, emoji in [(1, "+1"), (2, "👎")]:
        message_id = f"170000000{n}.000100"
        record = AnswerRecord(
            answer_id=make_answer_id("slack", "C1", message_id), platform="slack", channel="C1",
            message_id=message_id, question=f"question {n}", answer=f"answer {n}",
            contexts=[ContextRef(doc_id="d1", chunk_id=f"d1#{n}", text="passage")],
        )
        records.save_answer(store, record)
        record_reaction(platform="slack", channel="C1", message_id=message_id, user_id="U1", reaction=emoji,
                        action="added", event_ts=f"170000001{n}.0", settings=settings, store=store, queue=queue)
        ids.append(record.answer_id)
    return ids


def test_status_json_on_an_empty_install(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "status", "--json")
    assert rc == 0
    assert json.loads(out) == {  # exactly the documented keys
        "answers": 0, "feedback": {"+1": 0, "-1": 0}, "new_since_adapter": 0, "queue_depth": 0,
        "job": None, "current_adapter": None,
    }
    rc, out, _ = run(capsys, "status")
    assert rc == 0 and "0 (auto-retrain at 50)" in out and "none (base model)" in out


def test_status_retrain_and_status_again(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    seed(settings)
    rc, out, _ = run(capsys, "retrain", "--reason", "new handbook")
    assert rc == 0 and out.startswith("Retraining queued (job ")
    rc, out, _ = run(capsys, "retrain")
    assert rc == 1 and "already queued or running" in out
    status = json.loads(run(capsys, "status", "--json")[1])
    assert status["answers"] == 2 and status["feedback"] == {"+1": 1, "-1": 1}
    assert status["new_since_adapter"] == 2 and status["queue_depth"] == 1
    assert status["job"]["state"] == "queued" and status["job"]["requested_by"] == "console:local"
    rc, out, _ = run(capsys, "status")
    assert rc == 0 and "answers            2" in out and "queued" in out


def test_status_draws_the_last_jobs_loss_curve(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from core import jobs

    seed(settings)
    assert run(capsys, "retrain")[0] == 0
    store = open_store(settings)
    job_id = jobs.active_job_id(store)
    assert job_id is not None
    assert "training loss      no curve yet" in run(capsys, "status")[1]
    jobs.update_job_status(store, job_id, state="published", loss_curve=[2.0, 1.5, 1.0, 0.5])
    out = run(capsys, "status")[1]
    assert f"training loss      █▆▃▁  2.000 → 0.500 ({job_id[:8]}, 4 points)" in out  # the job just ended


def test_feedback_export_writes_the_joined_training_rows(
    settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ids = seed(settings)
    open_store(settings).put("feedback/dt=2026-01-01/broken.json", b"{oops")
    out_file = tmp_path / "export" / "rows.jsonl"
    rc, _, err = run(capsys, "feedback", "export", "--out", str(out_file))
    assert rc == 0 and "exported 2 rated answer(s)" in err and "skipped 1 unreadable" in err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    by_id = {row["answer"]["answer_id"]: row for row in rows}
    assert set(by_id) == set(ids)
    assert by_id[ids[0]]["label"] == 1 and by_id[ids[1]]["label"] == -1
    assert by_id[ids[0]]["answer"]["contexts"][0]["text"] == "passage"
    assert by_id[ids[0]]["votes"][0]["reaction"] == "+1"


def test_chat_from_a_pipe_reacts_and_requests_retraining(
    settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`echorag chat` as a scripted process: reactions and /retrain go through the platforms' code."""
    script = ["연차는 며칠인가요?", "👍🏽", "👎", "/why outdated 2026년 규정이 아님", "+1", "/why wrong", "❤️",
              "/retrain 새 규정 반영", "/retrain"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "QDRANT_", "ECHORAG_"))}
    result = subprocess.run(
        [sys.executable, "-m", "handlers.cli", "chat"], input="\n".join(script) + "\n", capture_output=True,
        text=True, cwd=tmp_path, timeout=300,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 0, result.stderr
    replies = [block.strip() for block in result.stdout.split("\n\n") if block.strip()]
    assert len(replies) == 9  # one answer, then one reply per reaction or command
    assert replies[1] == replies[4] == "Feedback recorded (+1 for the last answer)."
    assert replies[2].startswith("Feedback recorded (-1 for the last answer). What was wrong? Optional: /why")
    assert replies[3] == "Thanks: recorded 'outdated' for the last answer."
    assert replies[5] == "a reason can only be given for an answer you voted 👎"  # the +1 replaced the -1
    assert replies[6].startswith("'heart' is not a feedback reaction (use one of: +1, thumbsup,")
    assert replies[7].startswith("Retraining queued (job ") and "1 new rating since the base model" in replies[7]
    assert "already queued or running" in replies[8]
    status = json.loads(run(capsys, "status", "--json")[1])
    assert status["answers"] == 1  # the emoji lines were reactions, not questions
    assert status["feedback"] == {"+1": 1, "-1": 0}  # the user's latest reaction wins
    assert (status["new_since_adapter"], status["queue_depth"]) == (1, 1)  # three reactions, one person
    assert status["job"]["requested_by"] == "console:local" and status["job"]["state"] == "queued"
    rc, _, _ = run(capsys, "feedback", "export", "--out", str(tmp_path / "rows.jsonl"))
    [row] = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert rc == 0 and row["answer"]["platform"] == "console" and row["answer"]["question"] == "연차는 며칠인가요?"
    assert (row["label"], [v["reaction"] for v in row["votes"]]) == (1, ["+1"])


def test_adapters_list_promote_rollback(settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, _ = run(capsys, "adapters", "list")
    assert rc == 0 and "no adapters published" in out
    registry = AdapterRegistry.from_settings(settings)
    files = tmp_path / "adapter"
    files.mkdir()
    (files / "adapter_model.safetensors").write_bytes(b"weights")
    for n in (1, 2):
        registry.publish(files, AdapterManifest(name="x", version=0, job_id=f"job{n}",
                                                metrics={"candidate": {"char_f1": 0.5 + n / 10}}), promote=True)
    rc, out, _ = run(capsys, "adapters", "list")
    assert rc == 0 and "* v2" in out and "  v1" in out and "char_f1=0.700" in out
    assert run(capsys, "adapters", "rollback")[1].strip() == "echorag: rolled back from v2 to v1"
    assert json.loads(run(capsys, "status", "--json")[1])["current_adapter"] == 1
    assert run(capsys, "adapters", "promote", "v2")[1].strip() == "echorag: CURRENT is now v2 (was v1)"
    listed = json.loads(run(capsys, "adapters", "list", "--json")[1])
    assert [(m["version"], m["current"]) for m in listed] == [(1, False), (2, True)]
    rc, _, err = run(capsys, "adapters", "promote", "9")
    assert rc == 2 and err.strip() == "error: adapter echorag has no published version v9 (published: v1, v2)"
    rc, _, err = run(capsys, "adapters", "promote", "latest")
    assert rc == 2 and "must look like 3 or v3" in err


def test_promote_and_rollback_hot_load_vllm(
    settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the GPU host (VLLM_URL set) moving CURRENT also makes vLLM serve it; a refusal is exit 1."""
    from tests.support_training import FakeServer

    vllm = FakeServer("vllm")
    try:
        monkeypatch.setenv("VLLM_URL", vllm.url)
        monkeypatch.setenv("ADAPTER_CACHE_DIR", str(tmp_path / "cache"))
        get_settings.cache_clear()
        registry = AdapterRegistry.from_settings(get_settings())
        files = tmp_path / "adapter"
        files.mkdir()
        (files / "adapter_config.json").write_text("{}")
        for n in (1, 2):
            registry.publish(files, AdapterManifest(name="x", version=0, job_id=f"job{n}"), promote=True)
        rc, out, _ = run(capsys, "adapters", "rollback")
        assert rc == 0 and "vLLM now serves v1" in out
        [load] = vllm.calls
        assert load["body"]["lora_name"] == "echorag" and load["body"]["load_inplace"] is True
        assert (Path(load["body"]["lora_path"]) / "adapter_config.json").is_file()
        vllm.rec.fail_with = 500
        rc, out, err = run(capsys, "adapters", "promote", "2")
        assert rc == 1 and "CURRENT is now v2" in out and "vLLM hot-load FAILED" in err
        assert registry.current() == 2
    finally:
        vllm.close()
