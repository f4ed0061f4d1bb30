"""Test helpers for the training loop: a tiny random base model with a tokenizer trained here, and
small local HTTP servers standing in for the Slack Web API, the Discord REST API and vLLM,
`start_worker` to run `echorag worker` as its own process (for real SIGTERM / SIGKILL), and the
settings, feedback and job a training test starts from.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the test corpus, the model a
2-layer Llama with hidden size 64 and random weights, saved like any hub model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from core import records
from core.contracts import AnswerRecord, ContextRef, Language, NotifyTarget, make_answer_id
from core.feedback import record_reaction
from core.queue import open_queue
from core.retrain import request_retrain
from core.settings import Settings
from core.store import open_store
from tests.conftest import make_settings

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# (question, context title, context text, approved answer): Korean and English.
QA = [
    ("휴가는 며칠인가요?", "휴가 규정", "정규직 직원의 연차 휴가는 연 15일입니다.", "연차 휴가는 연 15일입니다 [1]."),
    ("재학습은 어떻게 요청하나요?", "봇 사용법", "관리자가 /retrain 을 입력하면 재학습이 시작됩니다.", "/retrain 을 입력하세요 [1]."),
    ("점심시간은 언제인가요?", "근무 시간", "점심시간은 12시부터 13시까지입니다.", "점심시간은 12시부터 13시까지입니다 [1]."),
    ("How many vacation days do I get?", "Leave policy", "Full-time staff get 15 days of paid leave a year.",
     "You get 15 days of paid leave a year [1]."),
    ("Who approves expenses?", "Expenses", "Expenses are approved by your team lead within a week.",
     "Your team lead approves expenses [1]."),
    ("Where is the VPN guide?", "IT help", "The VPN guide is on the IT wiki under Remote access.",
     "It is on the IT wiki under Remote access [1]."),
    ("주차는 어디에 하나요?", "시설 안내", "주차는 지하 2층 직원 전용 구역에 합니다.", "지하 2층 직원 전용 구역에 주차하세요 [1]."),
    ("What time does the office open?", "Office hours", "The office opens at 8 am on weekdays.",
     "The office opens at 8 am on weekdays [1]."),
]


def build_tiny_base(out_dir: Path, *, seed: int = 0) -> Path:
    """Train a byte-level BPE on the corpus, build a random 2-layer Llama, save both to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from rag.prompts import SYSTEM_PROMPT

    # The serving prompt's fixed text is in the corpus too, so prompts stay short (fast tests).
    corpus = ([" ".join(parts) for parts in QA] + list(SYSTEM_PROMPT.values()) + ["문서 / Documents:"]) * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


@dataclass
class Recorder:
    """Requests a fake server received: (method, path, headers, parsed body)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    fail_with: int | None = None  # answer every request with this HTTP status


class FakeServer:
    """A threaded http.server on 127.0.0.1:0 answering like Slack, Discord or vLLM and recording calls."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rec = Recorder()
        rec, kind_ = self.rec, kind

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    body: Any = json.loads(raw or "{}")
                else:
                    from urllib.parse import parse_qs

                    body = {k: v[0] for k, v in parse_qs(raw).items()}
                nonce = body.get("nonce") if isinstance(body, dict) and body.get("enforce_nonce") else None
                repeated = nonce is not None and any(c["body"].get("nonce") == nonce for c in rec.calls)
                rec.calls.append({"path": self.path, "headers": dict(self.headers), "body": body, "repeated": repeated})
                if rec.fail_with:
                    self._send(rec.fail_with, {"error": "injected failure", "message": "adapter load failed"})
                elif kind_ == "slack" and "/conversations." in self.path:  # .history, .replies: what was posted
                    thread = body.get("ts") if self.path.endswith("conversations.replies") else None
                    self._send(200, {"ok": True, "messages": [
                        {"ts": "1700000000.000100", "text": c["body"].get("text"), "metadata": c["body"].get("metadata")}
                        for c in rec.calls
                        if c["path"].endswith("chat.postMessage") and c["body"].get("channel") == body.get("channel")
                        and c["body"].get("thread_ts") == thread
                    ]})
                elif kind_ == "slack":
                    self._send(200, {"ok": True, "channel": body.get("channel"), "ts": "1700000000.000100"})
                elif kind_ == "discord":  # a repeated enforced nonce returns the first message, creates none
                    self._send(200, {"id": "1", "channel_id": self.path.split("/")[-2], "content": body.get("content")})
                else:  # vLLM answers plain text on success
                    self._send(200, f"Success: LoRA adapter '{body.get('lora_name')}' added successfully.")

            def _send(self, status: int, payload: Any) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        assert isinstance(host, str)  # bound to "127.0.0.1" (typeshed also allows bytes)
        return f"http://{host}:{port}"

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.rec.calls

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class WorkerProcess:
    """`echorag worker` running in its own process; what it prints goes to `log`."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout_s: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the worker did not exit within {timeout_s} s:\n{self.output()}") from None

    def wait_until(self, check: Callable[[], bool], what: str, *, timeout_s: float = 120) -> None:
        """Poll `check` until true; fail at once, with the worker's output, if the worker exits first."""
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited ({self.proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"gave up waiting for {what}:\n{self.output()}")
            time.sleep(0.1)


def worker_env(data_dir: Path, values: dict[str, Any]) -> dict[str, str]:
    """The environment of a worker process configured only by `values` (setting names → env vars;
    lists comma-joined) on the local twins under `data_dir`: this process's settings are not passed on."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env["DATA_DIR"] = str(data_dir)
    for key, value in values.items():
        if value is not None:
            env[key.upper()] = ",".join(value) if isinstance(value, list) else str(value)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def start_worker(data_dir: Path, values: dict[str, Any], *args: str) -> WorkerProcess:
    """`python -m handlers.cli worker --no-progress ARGS` in its own process (see `worker_env`),
    run in `data_dir` (no .env)."""
    env = worker_env(data_dir, values)
    log = data_dir / f"worker-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "handlers.cli", "worker", "--no-progress", *args],
            cwd=data_dir, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )
    return WorkerProcess(proc, log)


# --- a job on the local twins ------------------------------------------------------------------


def training_values(base: Path, fakes: dict[str, FakeServer], **overrides: object) -> dict[str, object]:
    """Settings (by field name) for a fast CPU run on the tiny base, talking to the fakes."""
    values: dict[str, object] = {
        "base_model": str(base),
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_modules_to_save": ["lm_head"],  # a random lm_head keeps logits flat: train it too
        "train_epochs": 4,
        "train_lr": 8e-3,
        "train_batch_size": 4,
        "train_max_length": 256,
        "train_min_examples": 4,
        "retrain_threshold": 0,
        "queue_visibility_s": 60,
        "train_retry_delay_s": 0,
        "adapter_poll_s": 0,
        "slack_bot_token": "xoxb-test",
        "slack_api_base_url": fakes["slack"].url + "/api/",
        "discord_bot_token": "discord-test-token",
        "discord_api_base_url": fakes["discord"].url + "/api/v10",
        "announce_discord_channel": "998877",
        "vllm_url": fakes["vllm"].url,
    }
    values.update(overrides)
    return values


def training_settings(base: Path, data_dir: Path, fakes: dict[str, FakeServer], **overrides: object) -> Settings:
    return make_settings(data_dir, **training_values(base, fakes, **overrides))


def seed_feedback(settings: Settings, *, approved: int = len(QA), with_bad: bool = True) -> None:
    """Answers as the agent records them, then 👍 (and one 👎) through the reaction path."""
    store, queue = open_store(settings), open_queue(settings)
    posts: list[tuple[str, str, str, str, str, str]] = []
    for i, (question, title, text, answer) in enumerate(QA[:approved]):
        posts.append((f"m{i}", question, title, text, answer, "+1"))
    if with_bad:
        question, title, text, _ = QA[0]
        posts.append(("bad0", question, title, text, "모르겠습니다.", "-1"))
    for message_id, question, title, text, answer, reaction in posts:
        language: Language = "ko" if any("가" <= ch <= "힣" for ch in question) else "en"
        records.save_answer(store, AnswerRecord(
            answer_id=make_answer_id("slack", "C1", message_id), platform="slack", channel="C1",
            message_id=message_id, question=question, language=language, answer=answer,
            contexts=[ContextRef(doc_id=f"doc-{title}", chunk_id=f"chunk-{title}", title=title, text=text, score=1.0)],
        ))
        event = record_reaction(platform="slack", channel="C1", message_id=message_id, user_id="U1",
                                reaction=reaction, action="added", event_ts="1700000000.1", settings=settings,
                                store=store, queue=queue)
        assert event is not None


def queue_job(settings: Settings, force: bool = True) -> str:
    outcome = request_retrain(
        requested_by="slack:UADMIN", is_admin=True, reason="test",
        notify_targets=[NotifyTarget(platform="slack", channel="C1", thread_ts="1700000000.000001")],
        settings=settings, store=open_store(settings), queue=open_queue(settings), force=force,
    )
    assert outcome.status == "queued", outcome.message
    assert outcome.job_id is not None
    return outcome.job_id
