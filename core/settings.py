"""All configuration, from environment variables or `.env`; every field has an embedded default.

With no settings at all the bot runs on one machine: Qdrant local mode under `DATA_DIR`, a local
blob store and SQLite queue under `DATA_DIR`, extractive answers, Kiwi BM25 without dense vectors.
Lists are comma-separated (`ADMIN_USER_IDS=U1,U2`); maps are JSON (`CHANNEL_SPACES={"C1":["hr"]}`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CsvList = Annotated[list[str], NoDecode]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Process-wide settings. Build with `get_settings()`; tests build their own instances."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- local data -------------------------------------------------------------------------
    data_dir: Path = Path("./data")  # everything the embedded defaults keep on disk

    # --- knowledge base / retrieval ---------------------------------------------------------
    qdrant_url: str | None = None  # Qdrant server/cluster; unset -> embedded engine under DATA_DIR
    qdrant_api_key: str | None = None  # with QDRANT_URL
    qdrant_path: Path | None = None  # default: DATA_DIR/qdrant
    qdrant_collection: str = "echorag"  # collection (server) or folder name (embedded)
    vector_backend: Literal["auto", "server", "local", "edge"] = "auto"  # auto: server if QDRANT_URL, else edge (qdrant-edge); local = qdrant-client local mode
    chunk_size: int = Field(default=700, ge=100)  # characters per chunk
    chunk_overlap: int = Field(default=1, ge=0)  # sentences repeated between neighbouring chunks
    default_space: str = "default"  # knowledge space for `ingest` without --space
    dense_model: str | None = None  # sentence-transformers name or path
    embedding_base_url: str | None = None  # OpenAI-compatible /embeddings endpoint
    embedding_model: str | None = None  # model name sent to EMBEDDING_BASE_URL (e.g. bge-m3)
    embedding_api_key: str | None = None  # with EMBEDDING_BASE_URL
    reranker_model: str | None = None  # sentence-transformers CrossEncoder name or path
    retrieve_k: int = Field(default=30, ge=1)  # candidates per prefetch
    top_k: int = Field(default=5, ge=1)  # passages given to the answer step
    abstain_score: float = 0.0  # grade: abstain when the evidence scores below this
    abstain_coverage: float = Field(default=0.4, ge=0, le=1)  # grade: min share of question terms found
    retrieval_feedback: bool = True  # 👍/👎 on answers re-rank passages for similar questions at once
    feedback_half_life_days: float = Field(default=90.0, gt=0)  # a vote's weight in retrieval halves this often

    # --- answering --------------------------------------------------------------------------
    llm_backend: Literal["auto", "openai", "transformers", "extractive"] = "auto"  # auto: openai if LLM_BASE_URL, else extractive
    llm_base_url: str | None = None  # OpenAI-compatible endpoint (vLLM, OpenAI, Ollama, LM Studio)
    llm_model: str | None = None  # with vLLM: the LoRA adapter name is the model
    llm_api_key: str | None = None  # with LLM_BASE_URL
    llm_timeout_s: float = 60.0  # per LLM request
    llm_max_tokens: int = 512  # answer length cap

    # --- feedback loop ----------------------------------------------------------------------
    feedback_bucket: str | None = None  # S3 bucket; unset -> DATA_DIR/store
    store_dir: Path | None = None  # default: DATA_DIR/store
    training_queue_url: str | None = None  # SQS FIFO; unset -> DATA_DIR/queue.sqlite
    queue_path: Path | None = None  # default: DATA_DIR/queue.sqlite
    queue_max_receives: int = 3  # then the job goes to the dead-letter queue
    queue_visibility_s: int = 900  # a received job stays hidden this long (the worker extends it)
    admin_user_ids: CsvList = Field(default_factory=list)  # "slack:U123,discord:456" or bare ids
    retrain_threshold: int = 20  # new effective votes (distinct user and answer) since the current adapter
    positive_emoji: CsvList = Field(default_factory=lambda: ["+1", "thumbsup", "white_check_mark", "100"])  # label +1
    negative_emoji: CsvList = Field(default_factory=lambda: ["-1", "thumbsdown", "x"])  # label -1
    adapter_name: str = "echorag"  # registry name under adapters/ and the vLLM LoRA name
    aws_max_attempts: int = Field(default=4, ge=1)  # S3/SQS: total tries per call (botocore standard mode)
    api_keys_secret_arn: str | None = None  # Lambda: Secrets Manager JSON {"qdrant_api_key","llm_api_key","embedding_api_key"}

    # --- chat platforms ---------------------------------------------------------------------
    slack_bot_token: str | None = None  # xoxb-…
    slack_signing_secret: str | None = None  # verifies Events API requests
    slack_app_token: str | None = None  # xapp-… for Socket Mode
    slack_api_base_url: str = "https://slack.com/api/"  # Web API base (tests point it at a fake)
    slack_secret_arn: str | None = None  # Lambda: Secrets Manager JSON {"signing_secret","bot_token"}
    slack_reaction_thanks: bool = False  # a short ephemeral "thanks" when someone reacts to an answer
    slack_answer_lease_s: float | None = Field(default=None, gt=0)  # claim on a question; default 120+ s
    slack_suggested_prompts: CsvList = Field(  # AI-app threads open with these (at most 4)
        default_factory=lambda: ["무엇을 물어볼 수 있나요?", "What can you answer from our documents?"]
    )
    slack_prompts_title: str = "이렇게 물어보세요 · Try asking"  # the heading above the suggested prompts
    slack_streaming: bool = True  # with an LLM, stream answers in threads (chat.startStream/appendStream/stopStream)
    slack_stream_buffer: int = Field(default=256, ge=1)  # characters per appendStream: fewer calls, within Slack's rate
    discord_application_id: str | None = None  # for webhooks and command registration
    discord_public_key: str | None = None  # verifies Interactions requests (Ed25519)
    discord_bot_token: str | None = None  # gateway process, command registration, notifications
    discord_api_base_url: str = "https://discord.com/api/v10"  # REST base (tests point it at a fake)
    discord_secret_arn: str | None = None  # Lambda: Secrets Manager JSON {"public_key","bot_token","application_id"}
    discord_message_content: bool = False  # MESSAGE_CONTENT intent on: every reply in an answer's thread is asked
    ask_queue_url: str | None = None  # SQS standard queue for Discord /ask work; unset -> local
    channel_spaces: dict[str, list[str]] = Field(default_factory=dict)  # channel id -> spaces
    default_spaces: CsvList = Field(default_factory=list)  # what unmapped channels and DMs see; empty = DEFAULT_SPACE only, * = all
    announce_slack_channel: str | None = None  # also told about every training result
    announce_discord_channel: str | None = None  # also told about every training result

    # --- training (GPU host) ----------------------------------------------------------------
    base_model: str | None = None  # path or hub id of the model the adapters sit on
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling
    lora_target_modules: CsvList = Field(  # modules LoRA wraps
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    train_epochs: int = 2  # passes over the snapshot
    train_lr: float = 2e-4  # learning rate
    train_max_length: int = 1024  # tokens per example (longer are truncated)
    train_min_examples: int = 4  # fewer rated answers -> "not enough feedback"
    train_seed: int = 42  # deterministic runs
    train_batch_size: int = Field(default=4, ge=1)  # examples per optimiser step
    train_objective: Literal["kto", "sft"] = "kto"  # kto: every 👍 and 👎 (unpaired); sft: 👍 answers only
    train_beta: float = Field(default=0.1, gt=0)  # KTO's beta: how far one step may move from the reference
    lora_modules_to_save: CsvList = Field(default_factory=list)  # trained in full beside LoRA (e.g. lm_head)
    adapter_cache_dir: Path | None = None  # local adapter copies (vLLM's lora_path); default DATA_DIR/adapters
    adapter_poll_s: float = 30.0  # transformers backend: check CURRENT at most this often
    train_retry_delay_s: int = 60  # a failed job is retried after this (up to QUEUE_MAX_RECEIVES)
    vllm_url: str | None = None  # base URL of vLLM for /v1/load_lora_adapter
    gold_questions: Path | None = None  # optional gold QA set for the gate
    batch_job_queue: str | None = None  # training trigger: AWS Batch job queue (name or ARN) of the GPU jobs
    batch_job_definition: str | None = None  # training trigger: its job definition (name, name:revision or ARN)

    @field_validator(
        "admin_user_ids", "positive_emoji", "negative_emoji", "lora_target_modules", "lora_modules_to_save",
        "default_spaces", "slack_suggested_prompts", mode="before",
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @property
    def resolved_qdrant_path(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"

    @property
    def resolved_store_dir(self) -> Path:
        return self.store_dir or self.data_dir / "store"

    @property
    def resolved_queue_path(self) -> Path:
        return self.queue_path or self.data_dir / "queue.sqlite"

    @property
    def resolved_adapter_cache_dir(self) -> Path:
        return self.adapter_cache_dir or self.data_dir / "adapters"

    @property
    def uses_llm(self) -> bool:
        """Whether answers come from an LLM (LLM_BACKEND=auto: when LLM_BASE_URL or LLM_MODEL is set)."""
        if self.llm_backend == "auto":
            return bool(self.llm_base_url or self.llm_model)
        return self.llm_backend != "extractive"

    def spaces_for_channel(self, channel: str | None) -> list[str] | None:
        """Spaces a chat channel may see (a Discord thread: pass its parent). None means every space,
        only when DEFAULT_SPACES is `*`: an unmapped channel or a DM is never let see everything by
        accident, it sees DEFAULT_SPACES, or DEFAULT_SPACE alone when that is empty."""
        if channel is not None and channel in self.channel_spaces:
            return list(self.channel_spaces[channel])
        if "*" in self.default_spaces:
            return None
        return list(self.default_spaces) or [self.default_space]

    def space_mapping_summary(self) -> str:
        """One log line: what each mapped channel sees, and what every other place sees."""
        unmapped = self.spaces_for_channel(None)
        rest = "every space" if unmapped is None else ", ".join(unmapped)
        mapped = "; ".join(f"{channel} -> {', '.join(spaces)}" for channel, spaces in sorted(self.channel_spaces.items()))
        return f"knowledge spaces: {mapped or 'no channel mapped'}; unmapped channels and DMs see {rest}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (Lambda reuses them across warm invocations), with the
    service API keys from API_KEYS_SECRET_ARN when it is set."""
    from core.secrets import with_api_keys

    return with_api_keys(Settings())
