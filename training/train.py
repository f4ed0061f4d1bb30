"""LoRA fine-tuning on every effective vote (transformers + peft, a plain torch loop).

Objective (TRAIN_OBJECTIVE): `kto` (default) learns from unpaired 👍 and 👎 alike, as KTO does
(Ethayarajh et al., 2024): with r = log π(answer | prompt) − log π_ref(answer | prompt) over the
answer tokens, a desirable example's loss is 1 − σ(β·r) and an undesirable one's 1 − σ(−β·r),
weighted so both classes count equally. The reference is the adapter training starts from (the
live one, or the base), its log-probabilities computed once before the first step. KTO's reference
point z₀ (a batch KL estimate on mismatched pairs) is fixed at 0, TRL's `apo_zero_unpaired`: the
estimate needs a second, frozen copy of the live adapter run on every step, and z₀ is clamped at 0
and stays near it in these short runs. `sft` trains on the 👍 answers' tokens alone (NLL).

Why a hand loop, not TRL's KTOTrainer: TRL's trainer would bring `datasets`, pyarrow and pandas to
the GPU host, take the reference from the adapter-disabled base (continual training needs the live
adapter), and replace the worker's per-step progress, stop and seeding hooks; the loss is a few
lines. Continual: when an adapter is live, training resumes from it (`PeftModel.from_pretrained(…,
is_trainable=True)`). The loss covers the answer tokens only (the prompt is masked to -100), the
prompt is rendered as the serving backend renders it, the learning rate warms up for the first 10%
of steps and decays on a cosine, and the seed fixes data order and LoRA init. bf16 on a GPU, fp32
on CPU. Progress goes to a tqdm bar and to a callback (job status, stopping early).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.settings import Settings
from rag.llm_transformers import render_prompt

if TYPE_CHECKING:
    from training.dataset import Example

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, float], None]  # (fraction done 0..1, current loss)
IGNORE = -100


@dataclass(frozen=True)
class TrainConfig:
    """What a run trains: the base model and the LoRA / optimiser settings (from settings by default)."""

    base_model: str
    r: int = 16
    alpha: int = 32
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    modules_to_save: tuple[str, ...] = ()
    epochs: int = 2
    lr: float = 2e-4
    max_length: int = 1024
    batch_size: int = 4
    seed: int = 42
    objective: str = "kto"  # "kto": every 👍 and 👎; "sft": the 👍 answers only
    beta: float = 0.1  # KTO's β: how far the adapter may move from the reference per unit of loss
    dtype: str | None = None  # "float32" / "bfloat16"; None: bf16 on GPU, fp32 on CPU (benchmarks override)

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainConfig:
        if not settings.base_model:
            raise ConfigError("BASE_MODEL is not set: give the path or hub id of the model the adapters sit on")
        return cls(
            base_model=settings.base_model,
            r=settings.lora_r,
            alpha=settings.lora_alpha,
            target_modules=tuple(settings.lora_target_modules),
            modules_to_save=tuple(settings.lora_modules_to_save),
            epochs=settings.train_epochs,
            lr=settings.train_lr,
            max_length=settings.train_max_length,
            batch_size=settings.train_batch_size,
            seed=settings.train_seed,
            objective=settings.train_objective,
            beta=settings.train_beta,
        )


@dataclass
class TrainResult:
    steps: int
    examples: int
    final_loss: float
    seconds: float
    trainable_params: int
    train_seconds: float = 0.0  # the optimisation loop alone (no loading or saving)
    losses: list[float] = field(default_factory=list)


def pick_device() -> tuple[Any, Any]:
    """(device, dtype): bf16 on CUDA, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def release_memory() -> None:
    """Give freed GPU memory back between training and evaluation (vLLM may share the card)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tokenizer(base_model: str) -> Any:
    """The base model's tokenizer (a pad token is borrowed from eos when missing)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the base model {base_model!r} (BASE_MODEL): {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(base_model: str, *, device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """The base causal LM (bf16 on GPU, fp32 on CPU) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    if device is None or dtype is None:
        device, dtype = pick_device()
    tokenizer = load_tokenizer(base_model)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the base model {base_model!r} (BASE_MODEL): {exc}") from exc
    return model.to(device), tokenizer


def encode_example(tokenizer: Any, messages: list[dict[str, str]], answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: the prompt (as served) masked, the answer + end-of-turn token learned.

    Prompt and answer are tokenised separately, as at serving time (the prompt is encoded, the answer
    generated after it). Over-long examples keep the answer (up to half the budget) and drop the start
    of the prompt.
    """
    prompt_ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = [*answer_ids, tokenizer.eos_token_id]
    answer_ids = answer_ids[: max(1, max_length // 2)] if len(prompt_ids) + len(answer_ids) > max_length else answer_ids
    keep = max_length - len(answer_ids)
    prompt_ids = prompt_ids[-keep:] if keep > 0 else []
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any) -> dict[str, Any]:
    """Right-padded input_ids / attention_mask / labels tensors."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def answer_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(sum of log-probabilities of each row's answer tokens, their count): labels mark the answer.

    Logits are computed only over the positions that predict an answer token (`logits_to_keep`):
    with a 262k-token vocabulary (Gemma 3) the prompt's logits would be most of the time and memory."""
    import torch

    labels = batch["labels"][:, 1:]  # position j predicts token j + 1
    mask = labels != IGNORE
    columns = mask.any(0).nonzero()
    lo, hi = (int(columns.min()), int(columns.max()) + 1) if len(columns) else (0, 1)
    keep = torch.arange(lo, hi, device=labels.device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    labels, mask = labels[:, lo:hi], mask[:, lo:hi]
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1), mask.sum(-1)


def kto_loss(logps: Any, ref_logps: Any, labels: Any, weights: Any, beta: float) -> Any:
    """KTO with z₀ = 0: 1 − σ(β·r) for desirable rows (label +1), 1 − σ(−β·r) for undesirable ones."""
    import torch

    rewards = beta * (logps - ref_logps)
    return (weights * (1 - torch.sigmoid(labels * rewards))).sum() / weights.sum()


def reference_logps(model: Any, rows: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any,
                    batch_size: int) -> list[float]:
    """Each row's answer log-probability under the model as it is now (the KTO reference)."""
    import torch

    model.eval()
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            logps, _ = answer_logps(model, collate(rows[start : start + batch_size], pad_id, device))
            out.extend(float(v) for v in logps)
    model.train()
    return out


def class_weights(labels: Sequence[int]) -> list[float]:
    """Per-row weights so 👍 and 👎 count equally however many of each there are (KTO's λ_D, λ_U)."""
    n_pos, n_neg = sum(1 for v in labels if v > 0), sum(1 for v in labels if v < 0)
    if not n_pos or not n_neg:
        return [1.0] * len(labels)
    return [1.0 if v > 0 else n_pos / n_neg for v in labels]


def attach_lora(model: Any, config: TrainConfig, init_adapter: Path | None) -> Any:
    """Resume the live adapter (trainable) or start a fresh LoRA from the configured shape."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:
        log.info("continuing from the current adapter at %s", init_adapter)
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in config.target_modules if m in present]
    if not targets:
        raise ConfigError(
            f"none of LORA_TARGET_MODULES {list(config.target_modules)} exist in {config.base_model}; "
            f"pick from its linear layers (e.g. q_proj, v_proj)"
        )
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=list(config.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def train_lora(
    config: TrainConfig,
    examples: Sequence[Example],
    out_dir: Path,
    *,
    init_adapter: Path | None = None,
    progress: ProgressFn | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train on `examples` (messages + answer + label) and save the adapter to `out_dir`.

    One function on purpose (~85 lines): model, optimiser, autocast and the progress bar are set up
    and torn down around one short step loop, and split up they would only be passed around."""
    import torch
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    if config.objective not in ("kto", "sft"):
        raise ConfigError(f"TRAIN_OBJECTIVE must be 'kto' or 'sft', not {config.objective!r}")
    if config.objective == "sft":
        examples = [ex for ex in examples if ex.label > 0]
    if not examples:
        raise ConfigError("no training examples" + (" (sft trains on 👍 answers only)" if config.objective == "sft" else ""))
    started = time.perf_counter()
    seed_everything(config.seed)
    device, dtype = pick_device()
    if config.dtype:
        dtype = getattr(torch, config.dtype)
    base, tokenizer = load_base(config.base_model, device=device, dtype=dtype)
    model = attach_lora(base, config, init_adapter)
    model.train()
    rows = [encode_example(tokenizer, ex.messages, ex.answer, config.max_length) for ex in examples]
    labels = [ex.label for ex in examples]
    weights = class_weights(labels)
    kto = config.objective == "kto"
    refs = reference_logps(model, rows, tokenizer.pad_token_id, device, config.batch_size) if kto else []
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    batches_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = max(1, config.epochs * batches_per_epoch)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=total // 10, num_training_steps=total)
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    autocast = torch.autocast(device_type="cuda", dtype=dtype) if device.type == "cuda" and dtype != torch.float32 else None
    loop_started = time.perf_counter()
    bar = tqdm(total=total, desc="training", unit="step", disable=not show_progress, leave=False)

    def step_loss(model: Any, picked: list[int]) -> Any:
        batch = collate([rows[i] for i in picked], tokenizer.pad_token_id, device)
        if not kto:
            return model(**batch).loss
        logps, _ = answer_logps(model, batch)
        as_tensor = partial(torch.tensor, device=device, dtype=torch.float32)
        return kto_loss(logps, as_tensor([refs[i] for i in picked]), as_tensor([labels[i] for i in picked]),
                        as_tensor([weights[i] for i in picked]), config.beta)

    try:
        for _ in range(config.epochs):
            order = torch.randperm(len(rows), generator=generator).tolist()
            for start in range(0, len(order), config.batch_size):
                picked = order[start : start + config.batch_size]
                if autocast is not None:
                    with autocast:
                        loss = step_loss(model, picked)
                else:
                    loss = step_loss(model, picked)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if progress is not None:
                    progress(len(losses) / total, losses[-1])
    finally:
        bar.close()
    train_seconds = time.perf_counter() - loop_started
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    trainable = sum(p.numel() for p in params)
    del model, base, optimizer, params
    release_memory()
    return TrainResult(
        steps=len(losses),
        examples=len(rows),
        final_loss=losses[-1],
        seconds=time.perf_counter() - started,
        trainable_params=trainable,
        train_seconds=train_seconds,
        losses=losses,
    )
