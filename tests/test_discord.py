"""Discord end to end: signed interactions into the Lambda handler (API Gateway HTTP API events),
the ask worker run on what the handler queued (as SQS would deliver it: the local twin, and moto's
SQS over HTTP), the real agent over a real local Qdrant collection ingested here, a fake Discord
REST API that records calls, and the gateway fed discord.py's own events (reactions, interactions,
and MESSAGE_CREATE in an answer's thread through the client's parser).

One suite (~1,270 lines): the knowledge base is ingested once per module and every case drives the
same handlers and fake Discord; split files would each ingest again.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import discord
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from nacl.signing import SigningKey

from bots.discord.ask_worker import claim_key
from bots.discord.commands import COMMANDS
from bots.discord.conversation import turns_before
from bots.discord.gateway import GatewayBot, reaction_feedback
from bots.discord.interactions import SignatureError, verify_signature
from bots.discord.render import (
    DESCRIPTION_LIMIT,
    EMBEDS_TOTAL_LIMIT,
    FIELD_VALUE_LIMIT,
    feedback_custom_id,
    render_answer,
    split_text,
)
from bots.discord.runtime import close_runtime, open_ask_queue, runtime_for
from core import jobs
from core.contracts import AskJob, make_answer_id
from core.idempotency import once
from core.queue import open_queue
from core.records import effective_votes, iter_feedback, load_answer
from core.settings import Settings, get_settings
from core.store import open_store
from handlers import discord_interactions, discord_worker
from handlers.cli import main as cli_main
from rag.types import AgentAnswer, Citation
from tests.conftest import make_settings
from tests.support_discord import (
    APPLICATION_ID,
    BOT_USER,
    CHANNEL_ID,
    GUILD_ID,
    FakeDiscord,
    LambdaContext,
    apply_settings_env,
    ask_interaction,
    button_interaction,
    channel_message,
    command_interaction,
    guild_create,
    http_event,
    modal_submit_interaction,
    response_json,
    signed_event,
    sqs_event,
    thread_create,
    user,
)
from tests.support_faults import FlakyLLM, FlakyStore, leaked

if TYPE_CHECKING:  # discord.types is annotations only (importing it at runtime is circular)
    from discord.types.gateway import MessageReactionAddEvent

pytestmark = pytest.mark.timeout(180)

ADMIN_BY_LIST = "3000000000000000009"
ASK_QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:echorag-asks"

HANDBOOK_KO = """# 휴가 규정

연차 휴가는 입사 첫해에 15일이 주어집니다. 연차는 팀장의 승인을 받은 뒤 사용할 수 있습니다.

# 재택 근무

재택 근무는 일주일에 두 번까지 할 수 있습니다. 재택 근무 일정은 팀 캘린더에 미리 적어 둡니다.
"""

DEPLOY_EN = """# Deployments

Production deployments happen every Tuesday at 10:00 KST. A failed deployment is rolled back with the rollback pipeline.

# On-call

The on-call engineer answers pages within 15 minutes and writes an incident report the next day.
"""


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kb_qdrant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real local Qdrant collection with two small documents, ingested once for the module."""
    from rag.ingest import ingest_paths

    root = tmp_path_factory.mktemp("discord-kb")
    docs = root / "docs"
    docs.mkdir()
    (docs / "handbook-ko.md").write_text(HANDBOOK_KO, encoding="utf-8")
    (docs / "deploy-en.md").write_text(DEPLOY_EN, encoding="utf-8")
    settings = make_settings(root, qdrant_path=root / "qdrant")
    summary = ingest_paths([docs], space="default", settings=settings, progress=False)
    assert summary.failed == 0 and summary.added == 2
    return root / "qdrant"


@pytest.fixture(autouse=True)
def _close_runtime() -> Iterator[None]:
    yield
    close_runtime()  # releases the local Qdrant folder for the next test
    get_settings.cache_clear()  # the env this test exported is gone; later tests read their own


@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def _discord_fields(key: SigningKey, fake: FakeDiscord, kb_qdrant: Path) -> dict[str, Any]:
    return {
        "qdrant_path": kb_qdrant,
        "discord_public_key": key.verify_key.encode().hex(),
        "discord_application_id": APPLICATION_ID,
        "discord_api_base_url": fake.url,
        "discord_bot_token": "test-bot-token",
        "admin_user_ids": [f"discord:{ADMIN_BY_LIST}"],
    }


@pytest.fixture
def settings(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: SigningKey,
    fake_discord: FakeDiscord,
    kb_qdrant: Path,
) -> Settings:
    """Embedded defaults under tmp_path (local store, SQLite queues), exported as the Lambda's env."""
    return apply_settings_env(
        monkeypatch, make_settings(tmp_path, **_discord_fields(key, fake_discord, kb_qdrant))
    )


# --- helpers: Discord's side and Lambda's event source mapping ---------------------------------------


def send(key: SigningKey, fake: FakeDiscord, payload: dict[str, Any]) -> tuple[int, Any]:
    """POST a signed interaction into the handler; on a deferred answer Discord opens the message."""
    response = discord_interactions.handler(signed_event(key, payload), LambdaContext())
    body = response_json(response)
    if response["statusCode"] == 200 and body.get("type") == 5:
        fake.open_deferred(payload["application_id"], payload["token"], payload["channel_id"])
    return response["statusCode"], body


def run_worker(records: list[tuple[str, str, int]], *, remaining_ms: int = 30_000) -> list[str]:
    """Invoke the worker with one SQS batch; returns the ids reported as failed."""
    event, context = sqs_event(records, ASK_QUEUE_ARN), LambdaContext(remaining_ms=remaining_ms)
    try:
        result = discord_worker.handler(event, context)
    except BatchProcessingError:  # every record failed: Lambda fails the invocation, SQS retries all
        return [message_id for message_id, _, _ in records]
    return [item["itemIdentifier"] for item in result["batchItemFailures"]]


def deliver_local(settings: Settings) -> tuple[list[tuple[str, str, int]], list[str]]:
    """What the SQS event source mapping does, on the local twin: receive, invoke, delete successes."""
    queue = open_ask_queue(settings)
    received = []
    while (message := queue.receive(wait_s=0)) is not None:
        received.append(message)
    records = [(m.message_id, m.body, m.receive_count) for m in received]
    failed = run_worker(records) if records else []
    for message in received:
        if message.message_id not in failed:
            queue.delete(message.receipt_handle)
    return records, failed


def answer_patches(fake: FakeDiscord) -> list[Any]:
    return [c.body for c in fake.calls_of("PATCH", r"/messages/@original$") if c.body.get("embeds")]


def ask_and_answer(
    key: SigningKey, fake: FakeDiscord, settings: Settings, question: str, **kw: Any
) -> dict[str, Any]:
    """/ask → deferred → worker → the edited message (as the fake holds it)."""
    payload = ask_interaction(question, **kw)
    status, body = send(key, fake, payload)
    assert (status, body) == (200, {"type": 5})
    _, failed = deliver_local(settings)
    assert failed == []
    return fake.messages[payload["token"]]


# --- signatures and malformed requests ---------------------------------------------------------------


def test_ping_is_answered_with_pong(key: SigningKey, fake_discord: FakeDiscord, settings: Settings) -> None:
    status, body = send(
        key, fake_discord, {"id": "1", "application_id": APPLICATION_ID, "type": 1, "token": "t"}
    )
    assert (status, body) == (200, {"type": 1})
    assert fake_discord.calls == []


def _unsigned(payload: dict[str, Any], **headers: str) -> dict[str, Any]:
    return http_event(json.dumps(payload), headers)


@pytest.mark.parametrize(
    "make_event",
    [
        pytest.param(lambda key, p: _unsigned(p), id="no-signature-headers"),
        pytest.param(
            lambda key, p: _unsigned(p, **{"x-signature-timestamp": str(int(time.time()))}),
            id="timestamp-only",
        ),
        pytest.param(lambda key, p: signed_event(SigningKey.generate(), p), id="other-key"),
        pytest.param(
            lambda key, p: signed_event(key, p, timestamp=int(time.time()) - 3600), id="stale-timestamp"
        ),
        pytest.param(
            lambda key, p: {**signed_event(key, p), "body": json.dumps({**p, "type": 1})}, id="tampered-body"
        ),
        pytest.param(
            lambda key, p: _unsigned(p, **{"x-signature-ed25519": "zz", "x-signature-timestamp": "1"}),
            id="not-hex",
        ),
        pytest.param(
            lambda key, p: _unsigned(
                p, **{"x-signature-ed25519": "00" * 64, "x-signature-timestamp": "soon"}
            ),
            id="timestamp-not-a-number",
        ),
    ],
)
def test_bad_or_missing_signature_is_401(
    make_event: Any, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    payload = ask_interaction("When do deployments happen?")
    response = discord_interactions.handler(make_event(key, payload), LambdaContext())
    assert response["statusCode"] == 401
    assert open_ask_queue(settings).depth() == 0
    assert fake_discord.calls == []


def test_misconfigured_public_key_is_401_with_a_message_naming_it(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    apply_settings_env(monkeypatch, settings.model_copy(update={"discord_public_key": "c0ffee"}))
    ping = {"id": "1", "application_id": APPLICATION_ID, "type": 1, "token": "t"}
    assert discord_interactions.handler(signed_event(key, ping), LambdaContext())["statusCode"] == 401
    with pytest.raises(SignatureError, match="DISCORD_PUBLIC_KEY is not a 64-hex-digit"):
        verify_signature("c0ffee", "00" * 64, str(int(time.time())), b"{}")


def test_setup_order_ping_is_answered_as_soon_as_the_public_key_exists(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, settings: Settings, aws_settings: Settings
) -> None:
    """The stack's secret starts empty; saving the Interactions Endpoint URL makes Discord send a PING."""
    import boto3
    from aws_lambda_powertools.utilities import parameters

    secrets = boto3.client("secretsmanager")
    arn = secrets.create_secret(Name=f"echorag-discord-setup-{uuid.uuid4().hex[:8]}",
                                SecretString=json.dumps({"public_key": "", "bot_token": "", "application_id": ""}))["ARN"]
    apply_settings_env(monkeypatch, settings.model_copy(update={
        "discord_secret_arn": arn, "discord_public_key": None, "discord_bot_token": None}))
    ping = {"id": "1", "application_id": APPLICATION_ID, "type": 1, "token": "t"}

    def put(value: str) -> Any:
        secrets.put_secret_value(SecretId=arn, SecretString=value)
        parameters.clear_caches()  # the function's 5-minute cache has lapsed
        return response_json(discord_interactions.handler(signed_event(key, ping), LambdaContext()))

    try:
        empty = discord_interactions.handler(signed_event(key, ping), LambdaContext())
        assert empty["statusCode"] == 503
        assert f"set public_key in the secret {arn}" in response_json(empty)["error"]
        assert put(json.dumps({"public_key": key.verify_key.encode().hex()})) == {"type": 1}  # no bot token yet
        broken = put("not json")
        assert "cannot read the Discord credentials" in broken["error"]
    finally:
        parameters.clear_caches()


def test_base64_encoded_body_is_verified_over_the_decoded_bytes(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    event = signed_event(
        key, {"id": "1", "application_id": APPLICATION_ID, "type": 1, "token": "t"}, base64_body=True
    )
    response = discord_interactions.handler(event, LambdaContext())
    assert (response["statusCode"], response_json(response)) == (200, {"type": 1})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"[1, 2, 3]", id="json-array"),
        pytest.param(b'{"id": "1"}', id="no-type"),
        pytest.param(b'{"id": "1", "type": 42}', id="unknown-type"),
        pytest.param(b'{"id": "1", "type": 2}', id="command-without-data"),
        pytest.param(
            json.dumps({**ask_interaction("q"), "member": None, "user": None}).encode(), id="ask-without-user"
        ),
        pytest.param(
            json.dumps({**ask_interaction("q"), "data": {"name": "ask", "options": "question"}}).encode(),
            id="ask-options-not-a-list",
        ),
        pytest.param(
            json.dumps(button_interaction("something-else", {"id": "5", "channel_id": CHANNEL_ID})).encode(),
            id="unknown-button",
        ),
        pytest.param(b'{"id": "1", "type": 1' + b", \"n\": " + b"9" * 5000 + b"}", id="int-of-5000-digits"),
        pytest.param(b'{"type": 1, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", id="nested-1000-deep"),
        pytest.param(json.dumps({**ask_interaction("q"), "member": [1]}).encode(), id="member-not-an-object"),
        pytest.param(json.dumps({**ask_interaction("q"), "member": {"user": "u"}}).encode(), id="user-not-an-object"),
        pytest.param(json.dumps({**ask_interaction("q"), "channel_id": None, "channel": "c"}).encode(),
                     id="channel-not-an-object"),
        pytest.param(json.dumps({**ask_interaction("q"), "id": "../../jobs/ACTIVE"}).encode(), id="id-not-a-snowflake"),
        pytest.param(json.dumps({**ask_interaction("q"), "channel_id": "C/../x"}).encode(),
                     id="channel-not-a-snowflake"),
        pytest.param(json.dumps({**ask_interaction("q"), "data": {"name": ["ask"]}}).encode(), id="name-not-a-string"),
    ],
)
def test_malformed_signed_bodies_are_400(
    body: bytes, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    response = discord_interactions.handler(signed_event(key, body), LambdaContext())
    assert response["statusCode"] == 400
    assert "error" in response_json(response)
    assert open_ask_queue(settings).depth() == 0


def test_unknown_route_is_404(key: SigningKey, settings: Settings) -> None:
    event = signed_event(key, {"type": 1})
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/discord/other"
    assert discord_interactions.handler(event, LambdaContext())["statusCode"] == 404


def test_empty_question_gets_an_ephemeral_hint_and_queues_nothing(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    status, body = send(key, fake_discord, ask_interaction("   "))
    assert status == 200 and body["type"] == 4 and body["data"]["flags"] == 64
    assert open_ask_queue(settings).depth() == 0


# --- /ask --------------------------------------------------------------------------------------------


def test_ask_defers_then_edits_the_response_once_with_answer_sources_and_buttons(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    payload = ask_interaction("When do production deployments happen?")
    status, body = send(key, fake_discord, payload)
    assert (status, body) == (200, {"type": 5})
    assert fake_discord.calls == []  # the endpoint only queued the work
    assert open_ask_queue(settings).depth() == 1

    _, failed = deliver_local(settings)
    assert failed == []
    patches = answer_patches(fake_discord)
    assert len(patches) == 1
    patch = patches[0]
    embed = patch["embeds"][0]
    assert "Tuesday" in embed["description"]
    assert embed["title"] == "When do production deployments happen?"
    assert "Deployments" in embed["fields"][0]["value"]  # the cited source, by title and file name
    assert "`deploy-en.md`" in embed["fields"][0]["value"] and "/tmp" not in embed["fields"][0]["value"]
    assert "extractive" in embed["footer"]["text"]
    assert patch["allowed_mentions"] == {"parse": []}

    message = fake_discord.messages[payload["token"]]
    answer_id = make_answer_id("discord", CHANNEL_ID, message["id"])
    buttons = patch["components"][0]["components"]
    assert [b["custom_id"] for b in buttons] == [
        feedback_custom_id("+1", answer_id),
        feedback_custom_id("-1", answer_id),
    ]
    record = load_answer(open_store(settings), answer_id)
    assert record is not None
    assert record.message_id == message["id"] and record.question == payload["data"]["options"][0]["value"]
    assert open_ask_queue(settings).depth() == 0


def test_a_thread_under_a_mapped_channel_sees_only_the_channels_spaces(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    """A thread (or forum post) has its own channel id: its parent's mapping must still apply."""
    settings = apply_settings_env(monkeypatch, settings.model_copy(update={"channel_spaces": {CHANNEL_ID: ["hr"]}}))
    thread_id = "1300000000000000777"
    payload = ask_interaction("When do production deployments happen?", channel_id=thread_id)
    payload["channel"] = {"id": thread_id, "type": 11, "parent_id": CHANNEL_ID, "guild_id": GUILD_ID}
    assert send(key, fake_discord, payload) == (200, {"type": 5})
    assert deliver_local(settings)[1] == []
    embed = fake_discord.messages[payload["token"]]["embeds"][0]
    assert "Tuesday" not in embed["description"] and embed.get("fields") == []


def test_unmapped_channels_see_the_default_spaces_only(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    settings = apply_settings_env(monkeypatch, settings.model_copy(update={"default_spaces": ["hr"]}))
    message = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    assert message["embeds"][0].get("fields") == []  # the deploy runbook is in "default", not "hr"
    assert settings.spaces_for_channel("1300000000000000999") == ["hr"]
    assert settings.model_copy(update={"default_spaces": []}).spaces_for_channel("x") == ["default"]
    assert settings.model_copy(update={"default_spaces": ["*"]}).spaces_for_channel("x") is None


def test_korean_question_is_answered_in_korean(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    message = ask_and_answer(key, fake_discord, settings, "연차 휴가는 며칠인가요?", locale="ko")
    embed = message["embeds"][0]
    assert "15일" in embed["description"]
    assert embed["fields"][0]["name"] == "출처"


def test_channel_mapped_to_another_space_never_cites_the_default_space(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    settings = apply_settings_env(
        monkeypatch, settings.model_copy(update={"channel_spaces": {CHANNEL_ID: ["hr"]}})
    )
    message = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    embed = message["embeds"][0]
    assert "Tuesday" not in embed["description"]
    assert embed.get("fields") == []  # nothing cited from a space the channel may not see


def test_same_interaction_delivered_twice_and_replayed_by_sqs_gives_one_answer(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    payload = ask_interaction("Who answers pages?")
    assert send(key, fake_discord, payload) == (200, {"type": 5})
    assert send(key, fake_discord, payload) == (200, {"type": 5})
    records, failed = deliver_local(settings)
    assert failed == []
    # SQS delivers at least once: the same record again, and a second copy of the job.
    copy = (str(uuid.uuid4()), records[0][1], 1)
    assert run_worker([records[0], copy]) == []
    assert len(answer_patches(fake_discord)) == 1
    assert len(fake_discord.calls_of("PATCH")) == 1


def test_ask_over_sqs_on_moto(
    monkeypatch: pytest.MonkeyPatch,
    aws_settings: Settings,
    key: SigningKey,
    fake_discord: FakeDiscord,
    kb_qdrant: Path,
) -> None:
    import boto3

    # As deployed: a standard ask queue, and the Discord credentials in Secrets Manager, not in env.
    sqs = boto3.client("sqs")
    ask_url = sqs.create_queue(
        QueueName=f"asks-{uuid.uuid4().hex[:12]}", Attributes={"VisibilityTimeout": "300"}
    )["QueueUrl"]
    credentials = {
        "public_key": key.verify_key.encode().hex(),
        "bot_token": "x",
        "application_id": APPLICATION_ID,
    }
    secret_arn = boto3.client("secretsmanager").create_secret(
        Name=f"echorag-discord-{uuid.uuid4().hex[:8]}", SecretString=json.dumps(credentials)
    )["ARN"]
    fields = {**_discord_fields(key, fake_discord, kb_qdrant), "ask_queue_url": ask_url}
    fields.update(discord_secret_arn=secret_arn, discord_public_key=None, discord_bot_token=None)
    settings = apply_settings_env(monkeypatch, aws_settings.model_copy(update=fields))
    wrong = signed_event(SigningKey.generate(), {"id": "1", "application_id": APPLICATION_ID, "type": 1})
    assert discord_interactions.handler(wrong, LambdaContext())["statusCode"] == 401
    payload = ask_interaction("How is a failed deployment rolled back?")
    assert send(key, fake_discord, payload) == (200, {"type": 5})
    assert send(key, fake_discord, payload) == (200, {"type": 5})  # a standard queue keeps both copies

    messages = sqs.receive_message(
        QueueUrl=ask_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert len(messages) == 2
    records = [(m["MessageId"], m["Body"], int(m["Attributes"]["ApproximateReceiveCount"])) for m in messages]
    assert run_worker(records) == []
    assert run_worker(records[:1]) == []  # redelivered after the visibility timeout

    patches = answer_patches(fake_discord)
    assert len(patches) == 1
    assert "rollback pipeline" in patches[0]["embeds"][0]["description"]
    message = fake_discord.messages[payload["token"]]
    answer = load_answer(open_store(settings), make_answer_id("discord", CHANNEL_ID, message["id"]))
    assert answer is not None and answer.platform == "discord"  # written to the S3 bucket


def queued_ask(
    key: SigningKey, fake: FakeDiscord, settings: Settings, question: str
) -> tuple[dict[str, Any], tuple[str, str]]:
    """/ask sent and deferred; the job taken off the local ask queue as (message_id, body)."""
    payload = ask_interaction(question)
    assert send(key, fake, payload) == (200, {"type": 5})
    message = open_ask_queue(settings).receive(wait_s=0)
    assert message is not None
    return payload, (message.message_id, message.body)


def test_failed_first_attempt_gives_its_claim_back_and_the_retry_answers_once(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    question = "When do production deployments happen?"
    payload, (message_id, body) = queued_ask(key, fake_discord, settings, question)
    fake_discord.fail_next("PATCH", 502)
    assert run_worker([(message_id, body, 1)]) == [message_id]
    assert len(fake_discord.calls_of("PATCH")) == 1
    assert fake_discord.messages[payload["token"]]["embeds"] == []  # the user still sees "thinking…"
    # The failed attempt released its claim: the redelivery answers at once, not after its lease.
    assert run_worker([(message_id, body, 2)]) == []
    assert len(fake_discord.calls_of("PATCH")) == 2  # the failed one and the answer
    assert "Tuesday" in fake_discord.messages[payload["token"]]["embeds"][0]["description"]
    assert run_worker([(message_id, body, 3)]) == []  # a late duplicate: no third edit
    assert len(fake_discord.calls_of("PATCH")) == 2


def test_a_claim_whose_attempt_died_is_retaken_after_its_lease(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    _, (message_id, body) = queued_ask(key, fake_discord, settings, "Who answers pages?")
    # An attempt that died mid-way (Lambda timeout) left its claim, leased for its remaining time.
    store, job = open_store(settings), AskJob.model_validate_json(body)
    assert once(store, claim_key(job), lease_s=0.5).__enter__().state == "run"  # and never exits
    assert run_worker([(message_id, body, 1)]) == []  # held: this copy is a duplicate
    assert fake_discord.calls == []
    time.sleep(0.6)
    assert run_worker([(message_id, body, 2)]) == []
    assert len(answer_patches(fake_discord)) == 1


def test_worker_faster_than_discord_waits_for_the_deferred_reply(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    _, (message_id, body) = queued_ask(key, fake_discord, settings, "Who answers pages?")
    fake_discord.fail_next("GET", 404)  # Discord has not processed the type-5 callback yet
    assert run_worker([(message_id, body, 1)]) == []
    assert len(fake_discord.calls_of("GET")) == 2
    assert len(answer_patches(fake_discord)) == 1


def test_a_malformed_message_fails_alone_in_its_batch(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    _, (message_id, body) = queued_ask(key, fake_discord, settings, "Who answers pages?")
    batch = [("poison-1", '{"question": 1}', 1), (message_id, body, 1)]
    assert run_worker(batch) == ["poison-1"]  # reported for redelivery (then the DLQ); the good one answered
    assert len(answer_patches(fake_discord)) == 1


def test_last_attempt_failure_tells_the_user(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    question = "When do production deployments happen?"
    payload, (message_id, body) = queued_ask(key, fake_discord, settings, question)
    fake_discord.fail_next("PATCH", 503)
    assert run_worker([(message_id, body, settings.queue_max_receives)]) == [message_id]
    assert "Sorry" in fake_discord.messages[payload["token"]]["content"]


def _llm_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings, llm: FlakyLLM) -> Settings:
    update = {"llm_backend": "openai", "llm_base_url": llm.url, "llm_model": "echorag", "llm_timeout_s": 5.0}
    return apply_settings_env(monkeypatch, settings.model_copy(update=update))


def _seen_by_user(fake: FakeDiscord) -> list[str]:
    return [json.dumps(c.body, ensure_ascii=False) for c in fake.calls_of("PATCH")]


def test_llm_outage_while_answering_is_redelivered_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    with FlakyLLM(fail_first=2) as llm:  # the openai client's own retry included: one attempt fails
        settings = _llm_settings(monkeypatch, settings, llm)
        payload, (message_id, body) = queued_ask(key, fake_discord, settings, "When do deploys happen?")
        assert run_worker([(message_id, body, 1)]) == [message_id]  # failed: SQS redelivers it
        assert fake_discord.messages[payload["token"]]["embeds"] == []  # still "thinking…"
        assert run_worker([(message_id, body, 2)]) == []
    assert len(answer_patches(fake_discord)) == 1
    assert "Tuesdays and Thursdays" in fake_discord.messages[payload["token"]]["embeds"][0]["description"]
    assert leaked(_seen_by_user(fake_discord)) == []


def test_llm_down_on_the_last_attempt_answers_from_the_documents_marked(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    """Earlier attempts are redelivered (the LLM may be back); the last one quotes the documents and
    says so, instead of an apology where the documents hold the answer."""
    from rag.agent import FALLBACK_MODEL, FALLBACK_NOTE

    with FlakyLLM(fail_first=99) as llm:
        settings = _llm_settings(monkeypatch, settings, llm)
        payload, (message_id, body) = queued_ask(key, fake_discord, settings, "When do production deployments happen?")
        assert run_worker([(message_id, body, 1)]) == [message_id]
        assert run_worker([(message_id, body, settings.queue_max_receives)]) == []
    message = fake_discord.messages[payload["token"]]
    description = message["embeds"][0]["description"]
    assert "Tuesday" in description and FALLBACK_NOTE["unavailable"]["en"] in description
    record = load_answer(open_store(settings), make_answer_id("discord", CHANNEL_ID, message["id"]))
    assert record is not None and record.model == FALLBACK_MODEL and record.adapter_version is None
    assert leaked(_seen_by_user(fake_discord)) == []


def test_store_outage_while_answering_is_redelivered_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    import bots.discord.runtime

    flaky = FlakyStore(open_store(settings), "answers/", failures=1)
    monkeypatch.setattr(bots.discord.runtime, "open_store", lambda settings: flaky)
    _, (message_id, body) = queued_ask(key, fake_discord, settings, "When do production deployments happen?")
    assert run_worker([(message_id, body, 1)]) == [message_id] and flaky.failed == 1
    assert run_worker([(message_id, body, 2)]) == []
    assert len(answer_patches(fake_discord)) == 1 and leaked(_seen_by_user(fake_discord)) == []


def test_expired_interaction_is_dropped_with_a_log_not_retried(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    payload = ask_interaction("When do production deployments happen?")
    send(key, fake_discord, payload)
    fake_discord.expire(payload["token"])  # the job waited past the token's 15 minutes
    _, failed = deliver_local(settings)
    assert failed == []
    assert [c.method for c in fake_discord.calls] == ["GET"]
    assert open_ask_queue(settings).depth() == 0


# --- /retrain ----------------------------------------------------------------------------------------


def test_retrain_refused_for_members_and_queued_once_for_admins(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    training = open_queue(settings)
    answer = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    send(key, fake_discord, button_interaction(answer["components"][0]["components"][0]["custom_id"], answer,
                                               user_id="2000000000000000002"))  # one new rating
    status, body = send(key, fake_discord, command_interaction("retrain", permissions="0"))
    assert status == 200 and body["type"] == 4
    assert body["data"]["flags"] == 64 and "Manage Server" in body["data"]["content"]
    assert training.depth() == 0

    status, body = send(key, fake_discord, command_interaction("retrain", permissions=str(0x20 | 0x400)))
    assert status == 200 and body["type"] == 4 and "flags" not in body["data"]
    assert training.depth() == 1
    message = training.receive(wait_s=0, visibility_s=60)
    assert message is not None
    job = json.loads(message.body)
    assert job["requested_by"] == "discord:2000000000000000001"
    assert job["notify_targets"] == [{"platform": "discord", "channel": CHANNEL_ID, "thread_ts": None}]

    # Another admin (the allow-list, no permission bits) while that job is pending: still one job.
    status, body = send(key, fake_discord, command_interaction("retrain", user_id=ADMIN_BY_LIST))
    assert status == 200 and "flags" not in body["data"]
    assert training.depth() == 1


def _force(value: Any) -> list[dict[str, Any]]:
    return [{"name": "force", "type": 5, "value": value}]


def test_retrain_without_new_ratings_is_refused_unless_forced(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    training, admin = open_queue(settings), str(0x20)
    for options in (None, _force(False)):
        status, body = send(key, fake_discord, command_interaction("retrain", permissions=admin, options=options))
        assert status == 200 and body["data"]["flags"] == 64  # only the asker hears
        content = body["data"]["content"]
        assert content.startswith("No new ratings since the base model") and "`/retrain force:True`" in content
    assert training.depth() == 0
    status, _ = send(key, fake_discord, command_interaction("retrain", permissions=admin, options=_force("yes")))
    assert status == 400 and training.depth() == 0  # not what Discord sends for a BOOLEAN option

    status, body = send(key, fake_discord, command_interaction("retrain", permissions=admin, options=_force(True)))
    assert status == 200 and "flags" not in body["data"]  # announced in the channel
    assert "forced): no new ratings since the base model" in body["data"]["content"]
    message = training.receive(wait_s=0, visibility_s=60)
    assert message is not None and json.loads(message.body)["reason"].endswith("(forced)")


# --- feedback: buttons and gateway reactions ---------------------------------------------------------


def test_button_feedback_is_recorded_once_per_click(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    message = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    up, down = (b["custom_id"] for b in message["components"][0]["components"])
    store = open_store(settings)

    status, body = send(key, fake_discord, button_interaction(up, message))
    assert status == 200 and body["data"]["flags"] == 64 and "Thanks" in body["data"]["content"]
    click = button_interaction(up, message)
    send(key, fake_discord, click)
    send(key, fake_discord, click)  # the same interaction delivered twice: one record
    events = list(iter_feedback(store))
    assert [(e.reaction, e.label, e.action) for e in events] == [("+1", 1, "added")] * 2
    assert events[0].answer_id == make_answer_id("discord", CHANNEL_ID, message["id"])
    votes = effective_votes(iter_feedback(store))[events[0].answer_id]
    assert [v.label for v in votes.values()] == [1]  # clicking 👍 twice is still one vote

    send(key, fake_discord, button_interaction(down, message, user_id="2000000000000000002"))
    # Changing one's mind: 👎 then 👍 again, and the latest click is the vote.
    send(key, fake_discord, button_interaction(down, message))
    send(key, fake_discord, button_interaction(up, message))
    votes = effective_votes(iter_feedback(store))[events[0].answer_id]
    assert sorted(v.label for v in votes.values()) == [-1, 1]  # user 1: 👍 (latest), user 2: 👎
    assert votes[events[0].user_hash].label == 1


def test_a_thumbs_down_click_opens_the_reason_modal_and_its_submission_lands_on_the_vote(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    message = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    up, down = (b["custom_id"] for b in message["components"][0]["components"])
    status, modal = send(key, fake_discord, button_interaction(down, message))
    assert status == 200 and modal["type"] == 9  # MODAL: the 👎 is recorded, the reason is optional
    select = modal["data"]["components"][0]["component"]
    assert [o["value"] for o in select["options"]] == ["wrong", "outdated", "not_in_docs", "incomplete", "other"]
    answer_id = make_answer_id("discord", CHANNEL_ID, message["id"])

    submit = modal_submit_interaction(modal["data"]["custom_id"], message,
                                      {"reason": ["not_in_docs"], "details": "the release calendar is missing"})
    for _ in range(2):  # a redelivered submission is one event
        status, body = send(key, fake_discord, submit)
        assert status == 200 and body["data"]["flags"] == 64 and "reason is recorded" in body["data"]["content"]
    [vote] = effective_votes(iter_feedback(open_store(settings)))[answer_id].values()
    assert (vote.label, vote.reason, vote.reason_text) == (-1, "not_in_docs", "the release calendar is missing")
    assert sum(1 for e in iter_feedback(open_store(settings)) if e.reason) == 1

    # someone whose vote is 👍 cannot attach a reason; a modal naming another message is refused
    send(key, fake_discord, button_interaction(up, message, user_id="2000000000000000003"))
    other = modal_submit_interaction(modal["data"]["custom_id"], message, {"reason": ["wrong"]},
                                     user_id="2000000000000000003")
    status, body = send(key, fake_discord, other)
    assert status == 200 and "only be given for an answer you voted" in body["data"]["content"]
    status, _ = send(key, fake_discord, modal_submit_interaction(
        modal["data"]["custom_id"], {**message, "id": "1399999999999999999"}, {"reason": ["wrong"]}))
    assert status == 400


def test_ask_about_this_message_asks_its_text(key: SigningKey, fake_discord: FakeDiscord, settings: Settings) -> None:
    target = {"id": "1200000000000000077", "channel_id": CHANNEL_ID, "content": "When do production deployments happen?",
              "author": {"id": "2000000000000000005", "username": "kim"}, "embeds": []}
    payload = command_interaction("Ask EchoRAG about this")
    payload["data"].update(type=3, target_id=target["id"], resolved={"messages": {target["id"]: target}})
    status, body = send(key, fake_discord, payload)
    assert (status, body) == (200, {"type": 5})
    _, failed = deliver_local(settings)
    assert failed == []
    answer = fake_discord.messages[payload["token"]]
    assert "Tuesday" in answer["embeds"][0]["description"]

    empty = command_interaction("Ask EchoRAG about this")
    empty["data"].update(type=3, target_id=target["id"], resolved={"messages": {target["id"]: {**target, "content": ""}}})
    status, body = send(key, fake_discord, empty)
    assert status == 200 and body["data"]["flags"] == 64
    broken = command_interaction("Ask EchoRAG about this")
    broken["data"].update(type=3, target_id="1", resolved={})
    assert send(key, fake_discord, broken)[0] == 400


def test_a_follow_up_from_the_button_is_answered_once_with_the_earlier_turn(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    first = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    [button] = first["components"][1]["components"]
    status, modal = send(key, fake_discord, button_interaction(button["custom_id"], first))
    assert status == 200 and modal["type"] == 9 and modal["data"]["custom_id"] == button["custom_id"]

    submit = modal_submit_interaction(modal["data"]["custom_id"], first, {"question": "And a failed one?"})
    for _ in range(2):  # Discord redelivers the submission: one answer
        status, body = send(key, fake_discord, submit)
        assert (status, body) == (200, {"type": 5})
    _, failed = deliver_local(settings)
    assert failed == []
    follow_up = fake_discord.messages[submit["token"]]
    assert "rolled back" in follow_up["embeds"][0]["description"]  # the earlier turn says what "one" is
    record = load_answer(open_store(settings), make_answer_id("discord", CHANNEL_ID, follow_up["id"]))
    assert record is not None and "deployment" in record.condensed_question
    assert len(answer_patches(fake_discord)) == 2  # the first answer and the follow-up, once each

    # a follow-up of the follow-up continues the same conversation, kept by the bot
    turns = turns_before(open_store(settings), record.answer_id)
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0].text == "When do production deployments happen?" and turns[2].text == "And a failed one?"

    # empty, or naming another message's answer: refused without queuing
    status, body = send(key, fake_discord, modal_submit_interaction(modal["data"]["custom_id"], first, {"question": " "}))
    assert status == 200 and body["data"]["flags"] == 64
    stray = modal_submit_interaction(modal["data"]["custom_id"], {**first, "id": "1399999999999999999"},
                                     {"question": "Who answers pages?"})
    assert send(key, fake_discord, stray)[0] == 400
    assert deliver_local(settings)[0] == []


def test_close_clicks_resolve_to_the_later_one_whatever_order_they_land_in(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    """👍 then 👎 clicked close together reach two Lambdas at once: the vote is 👎 every time.

    Two processes, as Lambda runs them: one invocation per process at a time (Powertools' resolver
    keeps the current event on the module's app, so two threads would share one event)."""
    store = open_store(settings)
    with multiprocessing.get_context("fork").Pool(2) as lambdas:  # terminated on the way out, also on failure
        for trial in range(12):
            message = ask_and_answer(key, fake_discord, settings, f"Who answers pages? ({trial})")
            up, down = (b["custom_id"] for b in message["components"][0]["components"])
            first, second = button_interaction(up, message), button_interaction(down, message)
            clicks = [second, first] if trial % 2 else [first, second]  # the later click may land first
            statuses = lambdas.map(_invoke_status, [signed_event(key, click) for click in clicks], chunksize=1)
            assert statuses == [200, 200]
            answer_id = make_answer_id("discord", CHANNEL_ID, message["id"])
            votes = effective_votes(iter_feedback(store))[answer_id]
            assert [v.label for v in votes.values()] == [-1], f"trial {trial}"


def _invoke_status(event: dict[str, Any]) -> int:
    """One interactions Lambda invocation in a pool process: its HTTP status."""
    return int(discord_interactions.handler(event, LambdaContext())["statusCode"])


def test_button_naming_another_message_is_ignored(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    message = ask_and_answer(key, fake_discord, settings, "Who answers pages?")
    up = message["components"][0]["components"][0]["custom_id"]
    status, body = send(key, fake_discord, button_interaction(up, {**message, "id": "1399999999999999999"}))
    assert status == 200 and body["data"]["flags"] == 64
    assert list(iter_feedback(open_store(settings))) == []


def _raw_reaction(
    message_id: str,
    emoji: str,
    event_type: Literal["REACTION_ADD", "REACTION_REMOVE"],
    *,
    user_id: str = "2000000000000000003",
    author_id: str | None = APPLICATION_ID,
    channel_id: str = CHANNEL_ID,
) -> discord.RawReactionActionEvent:
    """discord.py's own payload object, from the gateway's MESSAGE_REACTION_ADD/REMOVE data."""
    data: MessageReactionAddEvent = {  # a remove event's fields are a subset
        "user_id": user_id,
        "channel_id": channel_id,
        "message_id": message_id,
        "guild_id": GUILD_ID,
        "emoji": {"id": None, "name": emoji},
        "burst": False,
        "type": 0,
    }
    if event_type == "REACTION_ADD" and author_id is not None:
        data["message_author_id"] = author_id
    return discord.RawReactionActionEvent(data, discord.PartialEmoji.from_dict(data["emoji"]), event_type)


def test_gateway_reactions_on_answers_become_feedback(
    key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    message = ask_and_answer(key, fake_discord, settings, "연차 휴가는 며칠인가요?", locale="ko")
    runtime = runtime_for(settings)
    bot = GatewayBot(settings, runtime=runtime)
    answer_id = make_answer_id("discord", CHANNEL_ID, message["id"])

    # Through the client's own event handlers, as discord.py dispatches them.
    asyncio.run(bot.on_raw_reaction_add(_raw_reaction(message["id"], "👍🏽", "REACTION_ADD")))
    asyncio.run(bot.on_raw_reaction_add(_raw_reaction(message["id"], "🎉", "REACTION_ADD")))  # not a vote
    other_message = _raw_reaction("1399999999999999998", "👍", "REACTION_ADD", author_id=None)
    asyncio.run(bot.on_raw_reaction_add(other_message))  # not an answer
    asyncio.run(bot.on_raw_reaction_remove(_raw_reaction(message["id"], "👍🏽", "REACTION_REMOVE")))
    events = sorted(iter_feedback(runtime.store), key=lambda e: e.action)
    assert [(e.answer_id, e.reaction, e.label, e.action) for e in events] == [
        (answer_id, "+1", 1, "added"),
        (answer_id, "+1", 1, "removed"),
    ]
    assert answer_id not in effective_votes(iter_feedback(runtime.store))  # retracted

    # The same delivery handled twice is stored once; a re-add after the removal counts again.
    bot_id = int(APPLICATION_ID)
    readd = _raw_reaction(message["id"], "👍", "REACTION_ADD")
    at = time.time() + 5
    for _ in range(2):
        assert reaction_feedback(readd, runtime, bot_user_id=bot_id, received_at=at) is not None
    assert len(list(iter_feedback(runtime.store))) == 3
    votes = effective_votes(iter_feedback(runtime.store))[answer_id]
    assert [v.label for v in votes.values()] == [1]

    # The bot's own reactions and reactions on other authors' messages are skipped up front.
    own = _raw_reaction(message["id"], "👎", "REACTION_ADD", user_id=APPLICATION_ID)
    assert reaction_feedback(own, runtime, bot_user_id=bot_id) is None
    other = _raw_reaction(message["id"], "👎", "REACTION_ADD", author_id="4000000000000000004")
    assert reaction_feedback(other, runtime, bot_user_id=bot_id) is None
    down = reaction_feedback(_raw_reaction(message["id"], "👎", "REACTION_ADD"), runtime, bot_user_id=bot_id)
    assert down is not None and down.label == -1 and down.answer_id == answer_id


def test_gateway_retries_a_reaction_whose_write_fails(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    """Discord never redelivers a gateway event: the process itself retries a transient failure."""
    import bots.discord.gateway
    import bots.discord.runtime
    from bots.discord.runtime import DiscordRuntime

    message = ask_and_answer(key, fake_discord, settings, "연차 휴가는 며칠인가요?", locale="ko")
    flaky = FlakyStore(open_store(settings), "feedback/", failures=2)  # S3 503s, twice
    monkeypatch.setattr(bots.discord.runtime, "open_store", lambda settings: flaky)
    monkeypatch.setattr(bots.discord.gateway, "REACTION_RETRY_WAITS_S", (0.0, 0.0))
    bot = GatewayBot(settings, runtime=DiscordRuntime(settings))
    asyncio.run(bot.on_raw_reaction_add(_raw_reaction(message["id"], "👍", "REACTION_ADD")))
    assert flaky.failed == 2
    assert [(e.label, e.action) for e in iter_feedback(open_store(settings))] == [(1, "added")]
    flaky.failures, flaky.failed = 3, 0  # down for longer than the retries: logged, not raised
    asyncio.run(bot.on_raw_reaction_remove(_raw_reaction(message["id"], "👍", "REACTION_REMOVE")))
    assert flaky.failed == 3 and len(list(iter_feedback(open_store(settings)))) == 1


async def _until(condition: Any, what: str) -> None:
    """Let the bot's tasks run until `condition()` holds (a bound, not a timing assertion)."""
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway bot never {what}")


def test_gateway_serves_ask_buttons_and_retrain_without_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, fake_discord: FakeDiscord, settings: Settings
) -> None:
    """Interactions as the gateway delivers them (INTERACTION_CREATE dispatch data) through
    discord.py's own parser and command tree, answering through the fake REST API."""
    monkeypatch.setattr(discord.http.Route, "BASE", fake_discord.url)
    runtime = runtime_for(settings)

    async def scenario() -> None:
        bot = GatewayBot(settings, runtime=runtime)
        await bot.login("test-bot-token")
        dispatch = bot._connection.parsers["INTERACTION_CREATE"]
        try:
            ask = ask_interaction("When do production deployments happen?")
            fake_discord.expect(ask)
            dispatch(ask)
            await _until(lambda: fake_discord.calls_of("PATCH"), "edited its deferred reply")
            assert fake_discord.responses[ask["token"]] == {"type": 5}
            message = fake_discord.messages[ask["token"]]
            assert "Tuesday" in message["embeds"][0]["description"]

            click = button_interaction(message["components"][0]["components"][0]["custom_id"], message)
            fake_discord.expect(click)
            dispatch(click)
            await _until(lambda: click["token"] in fake_discord.responses, "answered the click")
            reply = fake_discord.responses[click["token"]]
            assert reply["type"] == 4 and reply["data"]["flags"] & 64
            events = list(iter_feedback(runtime.store))
            assert [(e.label, e.message_id) for e in events] == [(1, message["id"])]

            for permissions, ephemeral in (("0", True), (str(0x20), False)):
                retrain = command_interaction("retrain", permissions=permissions)
                fake_discord.expect(retrain)
                dispatch(retrain)
                await _until(lambda r=retrain: r["token"] in fake_discord.responses, "answered /retrain")
                data = fake_discord.responses[retrain["token"]]["data"]
                assert bool(data.get("flags", 0) & 64) is ephemeral
            assert open_queue(settings).depth() == 1

            # That job ends; the same vote is not worth another unless forced (`force` over the gateway).
            queued = open_queue(settings).receive(wait_s=0, visibility_s=60)
            assert queued is not None
            job_id = json.loads(queued.body)["job_id"]
            jobs.update_job_status(runtime.store, job_id, state="rejected", progress=1.0)
            jobs.release_active_job(runtime.store, job_id)
            for options, content in ((None, "No new ratings since"), (_force(True), "forced): no new ratings")):
                retrain = command_interaction("retrain", permissions=str(0x20), options=options)
                fake_discord.expect(retrain)
                dispatch(retrain)
                await _until(lambda r=retrain: r["token"] in fake_discord.responses, "answered /retrain")
                assert content in fake_discord.responses[retrain["token"]]["data"]["content"]
        finally:
            await bot.close()

    asyncio.run(scenario())


# --- follow-ups in an answer's thread (gateway MESSAGE_CREATE) ------------------------------------------

MENTION = f"<@{APPLICATION_ID}>"


async def _gateway(settings: Settings, fake: FakeDiscord, threads: list[dict[str, Any]]) -> GatewayBot:
    """A logged-in gateway bot whose cache holds the guild and `threads`, as GUILD_CREATE and
    THREAD_CREATE leave it."""
    bot = GatewayBot(settings, runtime=runtime_for(settings))
    await bot.login("test-bot-token")
    bot._connection.parsers["GUILD_CREATE"](guild_create())
    for thread in threads:
        bot._connection.parsers["THREAD_CREATE"](thread)
    return bot


async def _post(bot: GatewayBot, *messages: dict[str, Any]) -> None:
    """MESSAGE_CREATE through discord.py's parser, then wait for the on_message handlers it scheduled."""
    for message in messages:
        bot._connection.parsers["MESSAGE_CREATE"](message)
    await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == "discord.py: on_message"))


def _replies(fake: FakeDiscord, channel_id: str) -> list[dict[str, Any]]:
    return [m for m in fake.posted.values() if m["channel_id"] == channel_id]


def test_a_mention_in_an_answers_thread_is_answered_there_once_with_the_conversation(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", fake_discord.url)
    first = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    thread = first["id"]  # a thread started from the answer has the answer message's id
    other = "1399999999999999990"

    async def scenario() -> None:
        bot = await _gateway(settings, fake_discord, [thread_create(thread), thread_create(other)])
        try:
            assert bot.intents.guild_messages and not bot.intents.message_content
            question = channel_message(thread, f"{MENTION} And a failed one?", mentions=[BOT_USER])
            await _post(bot, question, question)  # a resumed session replays the event meanwhile,
            await _post(bot, question)  # or later: still one answer
            [reply] = _replies(fake_discord, thread)
            assert len(fake_discord.calls_of("PATCH", rf"/channels/{thread}/messages/{reply['id']}$")) == 1
            assert reply["message_reference"]["message_id"] == question["id"]
            assert "rolled back" in reply["embeds"][0]["description"]  # "one" is a deployment: the earlier turn
            assert reply["components"][0]["components"][0]["custom_id"].startswith("echorag:fb:+1:")
            assert fake_discord.calls_of("POST", rf"/channels/{thread}/typing$")
            record = load_answer(runtime_for(settings).store, make_answer_id("discord", thread, reply["id"]))
            assert record is not None and "deployment" in record.condensed_question
            assert record.question == "And a failed one?"

            # a reaction on that answer is feedback on it
            await bot.on_raw_reaction_add(_raw_reaction(reply["id"], "👍", "REACTION_ADD", channel_id=thread))
            assert [e.answer_id for e in iter_feedback(runtime_for(settings).store)] == [record.answer_id]

            # ignored: an unrelated thread, another bot, no mention (content intent off), the bot itself
            await _post(bot, channel_message(other, f"{MENTION} And a failed one?", mentions=[BOT_USER]))
            await _post(bot, channel_message(thread, f"{MENTION} hi", author=user("4000000000000000004", bot=True),
                                             mentions=[BOT_USER]))
            await _post(bot, channel_message(thread, "And who answers pages?"))
            await _post(bot, channel_message(thread, "done", author=BOT_USER))
            await _post(bot, channel_message(thread, MENTION, mentions=[BOT_USER]))  # nothing to ask
            assert len(_replies(fake_discord, thread)) == 1 and _replies(fake_discord, other) == []
            assert not fake_discord.calls_of("POST", rf"/channels/{other}/typing$")
        finally:
            await bot.close()

    asyncio.run(scenario())

    # the follow-up button on the thread's answer continues the same conversation, and so does the
    # next reply in the thread after it
    [reply] = _replies(fake_discord, thread)
    in_thread = {"id": thread, "type": 11, "guild_id": GUILD_ID, "parent_id": CHANNEL_ID, "name": "follow-up"}
    [button] = reply["components"][1]["components"]
    submit = modal_submit_interaction(button["custom_id"], reply, {"question": "Who answers pages?"})
    submit["channel"] = in_thread
    assert send(key, fake_discord, submit) == (200, {"type": 5})
    assert deliver_local(settings)[1] == []
    modal_answer = make_answer_id("discord", thread, fake_discord.messages[submit["token"]]["id"])
    assert [t.text for t in turns_before(open_store(settings), modal_answer)][::2] == [
        "When do production deployments happen?", "And a failed one?", "Who answers pages?"]

    async def next_reply() -> None:
        bot = await _gateway(settings, fake_discord, [thread_create(thread)])
        try:
            await _post(bot, channel_message(thread, f"{MENTION} And when is the report due?", mentions=[BOT_USER]))
        finally:
            await bot.close()

    asyncio.run(next_reply())
    last = _replies(fake_discord, thread)[-1]
    turns = turns_before(open_store(settings), make_answer_id("discord", thread, last["id"]))
    assert len(turns) == 8 and turns[4].text == "Who answers pages?"
    assert "next day" in last["embeds"][0]["description"]


def test_with_the_content_intent_every_reply_in_the_bots_threads_is_answered_and_failures_are_friendly(
    monkeypatch: pytest.MonkeyPatch, key: SigningKey, fake_discord: FakeDiscord, settings: Settings
) -> None:
    import bots.discord.gateway
    import bots.discord.runtime

    monkeypatch.setattr(discord.http.Route, "BASE", fake_discord.url)
    monkeypatch.setattr(bots.discord.gateway, "THREAD_RETRY_WAITS_S", (0.0, 0.0))
    first = ask_and_answer(key, fake_discord, settings, "When do production deployments happen?")
    thread, own = first["id"], "1399999999999999991"
    close_runtime()  # the next runtime opens the store below
    flaky = FlakyStore(open_store(settings), "discord/conversations/", failures=2)  # S3 503s, twice
    monkeypatch.setattr(bots.discord.runtime, "open_store", lambda settings: flaky)
    with_content = settings.model_copy(update={"discord_message_content": True})

    async def scenario() -> None:
        bot = await _gateway(with_content, fake_discord, [thread_create(thread),
                                                          thread_create(own, owner_id=APPLICATION_ID)])
        try:
            assert bot.intents.message_content
            await _post(bot, channel_message(thread, "And a failed one?"))  # no mention needed
            [reply] = _replies(fake_discord, thread)  # retried twice, one reply edited once
            assert flaky.failed == 2 and "rolled back" in reply["embeds"][0]["description"]
            await _post(bot, channel_message(own, "Who answers pages?"))  # a thread the bot opened itself
            assert "15 minutes" in _replies(fake_discord, own)[0]["embeds"][0]["description"]

            flaky.failures, flaky.failed = 5, 0  # down for longer than the retries
            await _post(bot, channel_message(thread, "And who writes the incident report?"))
            failed = _replies(fake_discord, thread)[-1]
            assert flaky.failed == 3 and failed["embeds"] == [] and "try again" in failed["content"]
            assert leaked([m["content"] for m in fake_discord.posted.values()]) == []
        finally:
            await bot.close()

    asyncio.run(scenario())


def test_gateway_serves_the_same_commands_it_registers(settings: Settings) -> None:
    bot = GatewayBot(settings, runtime=runtime_for(settings))
    served = {c.name: c.to_dict(bot.tree) for c in bot.tree.get_commands()}
    assert set(served) == {c["name"] for c in COMMANDS}
    assert [o["name"] for o in served["ask"]["options"]] == ["question"]
    assert served["ask"]["options"][0]["required"] is True
    assert str(served["retrain"]["default_member_permissions"]) == "32"
    assert served["retrain"]["contexts"] == COMMANDS[1]["contexts"]
    assert served["ask"]["contexts"] == COMMANDS[0]["contexts"]
    assert served["ask"]["integration_types"] == COMMANDS[0]["integration_types"]
    assert served["Ask EchoRAG about this"]["type"] == 3
    shape = [(o["name"], o["type"], o.get("required", False)) for o in COMMANDS[1]["options"]]
    assert [(o["name"], o["type"], o.get("required", False)) for o in served["retrain"]["options"]] == shape


# --- command registration ----------------------------------------------------------------------------


def test_register_commands_puts_every_command(fake_discord: FakeDiscord, settings: Settings) -> None:
    assert cli_main(["discord", "register-commands", "--guild", GUILD_ID]) == 0
    assert cli_main(["discord", "register-commands"]) == 0
    guild_call, global_call = fake_discord.calls_of("PUT")
    assert guild_call.path == f"/api/v10/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"
    assert global_call.path == f"/api/v10/applications/{APPLICATION_ID}/commands"
    assert guild_call.headers["Authorization"] == "Bot test-bot-token"
    ask, retrain, about = guild_call.body
    assert ask["name"] == "ask" and ask["options"][0]["name"] == "question" and ask["options"][0]["required"]
    assert ask["options"][0]["type"] == 3
    assert retrain["name"] == "retrain" and retrain["default_member_permissions"] == "32"
    assert retrain["contexts"] == [0]  # guild channels only: no DMs, where there is no Manage Server
    assert "default_member_permissions" not in ask  # everyone may ask
    # installable on a server and by a user, usable in servers and DMs; the message command too
    assert (ask["integration_types"], ask["contexts"]) == ([0, 1], [0, 1, 2]) == (about["integration_types"],
                                                                                about["contexts"])
    assert (about["name"], about["type"]) == ("Ask EchoRAG about this", 3) and "description" not in about
    assert guild_call.body == global_call.body == COMMANDS  # the same list each time: registering is idempotent


def test_invite_url_names_the_app_scopes_and_permissions(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["discord", "invite-url"]) == 0
    url = capsys.readouterr().out.strip()
    assert url == (
        f"https://discord.com/oauth2/authorize?client_id={APPLICATION_ID}"
        "&scope=bot+applications.commands&permissions=274877991936"
    )


def test_register_commands_without_token_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
    fake_discord: FakeDiscord,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    apply_settings_env(monkeypatch, settings.model_copy(update={"discord_bot_token": None}))
    assert cli_main(["discord", "register-commands"]) == 2
    assert "DISCORD_BOT_TOKEN" in capsys.readouterr().err
    assert cli_main(["serve", "discord"]) == 2  # the gateway needs the token too
    assert "DISCORD_BOT_TOKEN" in capsys.readouterr().err
    assert fake_discord.calls == []


# --- rendering ---------------------------------------------------------------------------------------


def _assert_within_limits(embeds: list[dict[str, Any]]) -> None:
    assert 1 <= len(embeds) <= 10
    total = 0
    for embed in embeds:
        assert 0 < len(embed.get("description", "")) <= DESCRIPTION_LIMIT
        assert len(embed.get("title", "")) <= 256
        assert all(len(f["value"]) <= FIELD_VALUE_LIMIT for f in embed.get("fields", []))
        total += len(embed.get("title", "")) + len(embed.get("description", ""))
        total += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
        total += len(embed.get("footer", {}).get("text", ""))
        assert "@everyone" not in embed.get("description", "")
    assert total <= EMBEDS_TOTAL_LIMIT


def test_long_answers_fit_discord_limits_and_never_ping() -> None:
    sentence = "배포는 화요일에 합니다 @everyone. "
    citations = [
        Citation(
            n=i,
            title=f"Doc {i} " + "x" * 150,
            source=f"https://kb.example/doc{i}",
            location=f"§{i}",
            doc_id=f"d{i}",
            chunk_id=f"c{i}",
            score=1.0 / i,
        )
        for i in range(1, 40)
    ]
    answer = AgentAnswer(
        question="q " * 300,
        condensed_question="q",
        text=sentence * 900,
        language="ko",
        citations=citations,
        model="echorag",
        adapter_version="v3",
    )
    payload = render_answer(answer, answer_id="0" * 32)
    _assert_within_limits(payload["embeds"])
    assert payload["embeds"][-1]["footer"]["text"] == "모델: echorag · 어댑터: v3"
    assert payload["embeds"][-1]["fields"][-1]["value"].endswith("… +30")  # the sources that did not fit
    assert payload["embeds"][0]["description"].endswith(" …")  # cut at a break, and says so
    assert payload["allowed_mentions"] == {"parse": []}

    # Without sources a long answer continues in a second embed rather than being cut at 4,096.
    no_sources = render_answer(replace(answer, citations=[], text=sentence * 200), answer_id=None)
    assert len(no_sources["embeds"]) == 2 and no_sources["components"] == []
    _assert_within_limits(no_sources["embeds"])
    assert all(len(piece) <= 100 for piece in split_text("word " * 100, 100))
