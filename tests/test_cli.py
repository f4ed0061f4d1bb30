"""`echorag ask`, `chat` and `eval` as a user runs them: real processes, real exit codes and output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import jobs
from core.queue import open_queue
from core.settings import Settings
from core.store import open_store
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"
EVAL_KEYS = {
    "questions",
    "recall@1",
    "recall@5",
    "recall@10",
    "mrr@10",
    "ndcg@10",
    "answer_containment",
    "answer_f1",
    "latency_ms_p50",
    "latency_ms_p95",
}


def _clean_env(data_dir: Path) -> dict[str, str]:
    """The environment with DATA_DIR only (none of the developer's LLM/Qdrant settings)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "QDRANT_", "DATA_DIR", "ECHORAG_"))
    }
    return {**env, "DATA_DIR": str(data_dir), "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT)}


def echorag(*args: str, data_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a clean env (DATA_DIR only) from a dir without a .env."""
    return subprocess.run(
        [sys.executable, "-m", "handlers.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_clean_env(data_dir),
        cwd=data_dir,
        timeout=300,
    )


class ChatSession:
    """`echorag chat` fed one line at a time, its output collected as it comes: a person at the
    console, so the test can change things (a job's status) between two lines."""

    def __init__(self, data_dir: Path) -> None:
        self.stderr = (data_dir / "chat.stderr").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "handlers.cli", "chat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, encoding="utf-8", env=_clean_env(data_dir), cwd=data_dir,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, text: str, *, count: int = 1, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while self.output.count(text) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {text!r} (x{count}) in the chat output:\n{self.output}")
            time.sleep(0.05)

    def close(self) -> int:
        if self.proc.poll() is None:
            self.say("/quit")
        try:
            rc = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(timeout=10)
            self.stderr.close()
        return rc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A DATA_DIR holding the sample knowledge base, ingested in-process once."""
    from rag.ingest import ingest_paths

    path = tmp_path_factory.mktemp("cli")
    summary = ingest_paths([EXAMPLES], space="default", settings=make_settings(path), progress=False)
    assert summary.failed == 0
    yield path


def test_ask_prints_the_answer_and_its_sources(data_dir: Path) -> None:
    result = echorag("ask", "배우자 출산 휴가는 며칠인가요?", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "10일" in out and "[1]" in out
    assert "출처:" in out and "examples/handbook/휴가-규정.md" in out
    assert str(EXAMPLES) not in out  # relative to the folder ingested, not this machine's absolute path


def test_ask_json(data_dir: Path) -> None:
    result = echorag("ask", "When do production deploys run?", "--json", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["language"] == "en" and not answer["abstained"]
    assert "10:00" in answer["text"]
    assert answer["citations"][0]["source"].endswith("deploy-runbook.md")
    assert {"retrieve", "generate", "total"} <= set(answer["timings_ms"])


def test_empty_question_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = echorag("ask", "  ", data_dir=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "empty" in lines[0]
    assert result.stdout == ""


def test_chat_script_with_follow_up_reaction_and_retrain(data_dir: Path) -> None:
    script = "\n".join(
        [
            "재택근무는 주 며칠까지 할 수 있나요?",
            "그럼 수습 기간에는 어떻게 돼?",
            "+1",
            ":tada:",
            "/retrain 답변이 좋아졌는지 확인",
            "/quit",
            "이 줄은 읽히지 않아야 합니다",
        ]
    )
    result = echorag("chat", data_dir=data_dir, stdin=script + "\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "주 3일" in out
    assert "수습 기간(입사 후 3개월) 중에는 재택근무를 할 수 없습니다" in out
    assert "Feedback recorded (+1" in out
    assert "'tada' is not a feedback reaction" in out
    assert out.count("재택근무.md") >= 2

    settings: Settings = make_settings(data_dir)
    store = open_store(settings)
    feedback = list(store.list("feedback/"))
    assert len([k for k in feedback if k.endswith(".json")]) >= 1
    assert len(list(store.list("answers/"))) >= 2
    assert open_queue(settings).depth() == 1  # the /retrain job


def test_chat_prints_the_result_of_the_job_it_queued(tmp_path: Path) -> None:
    """The console's "I'll post the result when it finishes" is kept: the session watches the job it
    queued and prints its outcome once, before the next prompt after the worker ended it."""
    store = open_store(make_settings(tmp_path))
    help_line = "Ask a question, or:"
    chat = ChatSession(tmp_path)
    try:
        chat.say("연차는 며칠인가요?")
        chat.say("/retrain")
        chat.wait_for("No new ratings since the base model")  # nothing rated yet: nothing queued
        assert "`/retrain force`" in chat.output and jobs.active_job_id(store) is None
        chat.say("+1")
        chat.say("/retrain 새 규정")
        chat.wait_for("Retraining queued (job ")
        job_id = jobs.active_job_id(store)
        assert job_id is not None and f"Retraining queued (job {job_id[:8]})" in chat.output

        jobs.update_job_status(store, job_id, state="running", progress=0.5, message="training: loss 1.2")
        chat.say("")  # an empty line is a poll
        chat.say("/help")
        chat.wait_for(help_line)
        assert "Retraining done" not in chat.output  # still running: nothing to say yet

        jobs.update_job_status(store, job_id, state="published", progress=1.0, adapter_version=1,
                               message="adapter v1 published: trained on 1 example")
        chat.say("")
        chat.say("/help")
        chat.wait_for(help_line, count=2)
        done = f"✅ Retraining done (job {job_id[:8]}): adapter v1 is now live."
        assert done in chat.output and "adapter v1 published: trained on 1 example" in chat.output
        assert chat.output.index(done) < chat.output.rindex(help_line)  # printed before the next prompt's reply

        chat.say("/retrain force")  # the same rating again, on purpose
        chat.wait_for("forced): no new ratings since")
        forced = jobs.active_job_id(store)
        assert forced not in (None, job_id)
        jobs.update_job_status(store, str(forced), state="failed", error="CUDA out of memory")
        chat.say("")
        chat.say("/help")
        chat.wait_for(help_line, count=3)
        assert f"❌ Retraining failed (job {str(forced)[:8]})." in chat.output
        assert "Error: CUDA out of memory" in chat.output
        chat.say("")
        assert chat.close() == 0
    finally:
        chat.close()
    assert chat.output.count("Retraining done") == 1 and chat.output.count("Retraining failed") == 1  # once each


def test_eval_json_on_a_tiny_fixture(tmp_path: Path) -> None:
    result = echorag(
        "eval",
        "--corpus",
        str(FIXTURES / "corpus.jsonl"),
        "--questions",
        str(FIXTURES / "questions.jsonl"),
        "--json",
        "--report",
        str(tmp_path / "eval.html"),
        data_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # the HTML page: the same metric table, and every question, the misses first
    html = (tmp_path / "eval.html").read_text(encoding="utf-8")
    shown = dict(re.findall(r'data-key="([^"]+)">([^<]*)<', html))
    assert shown == {key: str(value) for key, value in report.items()}
    rows = re.findall(r'<tr class="(miss|hit)">', html)
    assert len(rows) == report["questions"] and rows == sorted(rows, key=lambda r: r != "miss")
    assert ("miss" in rows) == (report["recall@1"] < 1 or report["answer_containment"] < 1)
    assert set(report) >= EVAL_KEYS
    assert report["questions"] == 8
    assert report["recall@1"] >= 0.75 and report["recall@10"] == 1.0
    assert report["answer_containment"] >= 0.75
    assert 0.0 < report["answer_f1"] < 1.0
    assert report["latency_ms_p95"] >= report["latency_ms_p50"] > 0
    assert "eval" in result.stderr  # the tqdm bar
    assert not (tmp_path / "qdrant").exists()  # the user's data dir is never touched


def test_eval_bad_questions_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "questions.jsonl"
    bad.write_text('{"id": "q1", "question": "ok?", "answers": ["a"], "positive_ids": ["p"]}\nnot json\n')
    result = echorag(
        "eval", "--corpus", str(FIXTURES / "corpus.jsonl"), "--questions", str(bad), data_dir=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}:2" in lines[0]


def test_locked_store_is_one_clear_line(data_dir: Path) -> None:
    from rag.retrieval import Retriever

    retriever = Retriever.from_settings(make_settings(data_dir))  # holds the local Qdrant folder
    try:
        result = echorag("ask", "연차는 며칠인가요?", data_dir=data_dir)
    finally:
        retriever.close()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "qdrant" in lines[0].lower()
