"""The walk: Slack and Discord sending signed requests through the front door, and after each
step a check of real state (bucket objects, queue messages, what the fake platforms recorded)."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rehearsal import RehearsalError, one_line, wait_for
from rehearsal.apigateway import FrontDoor
from rehearsal.aws_lambda import Function, LambdaService, QueuePoller
from rehearsal.servers import HttpReply, http_post
from rehearsal.template import Stack

if TYPE_CHECKING:
    from nacl.signing import SigningKey

    from tests.support_discord import FakeDiscord
    from tests.support_slack import FakeSlack

# What the walk relies on; it refuses to run when the template says otherwise.
SLACK_ROUTE, DISCORD_ROUTE = "POST /slack/events", "POST /discord/interactions"
EXPECTED_ROUTES = {SLACK_ROUTE: "handlers.slack_events.handler", DISCORD_ROUTE: "handlers.discord_interactions.handler"}
ASK_WORKER = "handlers.discord_worker.handler"
SECRET_KEYS = {  # env var naming the secret -> the JSON keys the code reads
    "SLACK_SECRET_ARN": {"signing_secret", "bot_token"},
    "DISCORD_SECRET_ARN": {"public_key", "bot_token", "application_id"},
}
SLACK_CHANNEL, SLACK_USER, SLACK_ADMIN = "CHR00001", "U0ASKER01", "U0ADMIN01"


@dataclass
class SlackSide:
    """Slack sending signed Events API and slash-command requests to the stack's URL."""

    url: str
    signing_secret: str
    fake: FakeSlack

    def send(self, body: str, content_type: str = "application/json", *, secret: str | None = None) -> tuple[HttpReply, float]:
        from slack_sdk.signature import SignatureVerifier

        timestamp = str(int(time.time()))
        signature = SignatureVerifier(secret or self.signing_secret).generate_signature(timestamp=timestamp, body=body)
        headers = {"content-type": content_type, "x-slack-request-timestamp": timestamp,
                   "x-slack-signature": str(signature), "user-agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}
        started = time.monotonic()
        reply = http_post(self.url, body.encode(), headers)
        return reply, time.monotonic() - started


@dataclass
class DiscordSide:
    """Discord sending signed interactions; like Discord, it opens the reply once the endpoint defers."""

    url: str
    key: SigningKey
    fake: FakeDiscord

    def send(self, payload: dict[str, Any], *, key: SigningKey | None = None) -> tuple[HttpReply, float]:
        body = json.dumps(payload).encode()
        timestamp = str(int(time.time()))
        signature = (key or self.key).sign(timestamp.encode() + body).signature.hex()
        headers = {"content-type": "application/json", "x-signature-ed25519": signature,
                   "x-signature-timestamp": timestamp, "user-agent": "Discord-Interactions/1.0 (+https://discord.com)"}
        started = time.monotonic()
        reply = http_post(self.url, body, headers)
        elapsed = time.monotonic() - started
        if reply.status == 200 and (reply.json() or {}).get("type") == 5:
            self.fake.open_deferred(payload["application_id"], payload["token"], payload["channel_id"])
        return reply, elapsed


# --- the rig ------------------------------------------------------------------------------------------


@dataclass
class Rig:
    """Everything the walk drives and inspects."""

    stack: Stack
    functions: dict[str, Function]  # by logical id
    routes: dict[str, Function]
    lambda_service: LambdaService
    pollers: dict[str, QueuePoller]  # by queue logical id
    slack: SlackSide
    discord: DiscordSide
    door: FrontDoor
    workdir: Path
    facts: dict[str, Any] = field(default_factory=dict)  # what one step leaves for the next

    def refused(self, what: str, reply: HttpReply) -> RehearsalError:
        """`what` was answered `reply`: with a 5xx, say what the function raised."""
        why = f"; {one_line(self.door.errors[-1])}" if reply.status >= 500 and self.door.errors else ""
        return RehearsalError(f"{what} got {reply.status} {one_line(reply.body[:200].decode(errors='replace'))}{why}")

    def env_of(self, route: str, name: str) -> str:
        value = self.routes[route].spec.env.get(name)
        if not value:
            raise RehearsalError(f"the {route} function has no {name} in template.yaml")
        return value

    @property
    def bucket(self) -> str:
        return self.env_of(SLACK_ROUTE, "FEEDBACK_BUCKET")

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return bytes(self.stack.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.stack.s3.exceptions.NoSuchKey:
            return None

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        return json.loads(data) if data is not None else None

    def keys(self, prefix: str) -> list[str]:
        pages = self.stack.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def peek(self, queue_url: str) -> list[dict[str, Any]]:
        """The queue's visible messages, left where they are (visibility 0; it counts as a receive,
        so it is used only where no consumer runs: the training queue and the DLQs)."""
        return list(self.stack.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=0,
            MessageSystemAttributeNames=["All"]).get("Messages", []))

    def depth(self, queue_url: str) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.stack.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        return sum(int(attrs.get(n, 0)) for n in names)

    def lazy_work_done(self, before: int) -> None:
        """Wait for the Slack function's async self-invocations and fail on any that failed."""
        self.lambda_service.wait_idle()
        new = self.lambda_service.outcomes[before:]
        if not new:
            raise RehearsalError("the Slack function never invoked itself for the lazy work")
        failed = [o for o in new if o.error]
        if failed:
            raise RehearsalError(f"lazy invocation failed {failed[0].attempts} times: {one_line(failed[0].error)}")


def answer_record(rig: Rig, platform: str, channel: str, message_id: str) -> dict[str, Any]:
    """The answer record the function stored in S3, through its by-id index."""
    from core.contracts import make_answer_id
    from core.records import ANSWER_INDEX_PREFIX

    answer_id = make_answer_id(platform, channel, message_id)
    index = rig.get_bytes(ANSWER_INDEX_PREFIX + answer_id)
    if index is None:
        raise RehearsalError(f"no answer record for {platform} message {message_id} in s3://{rig.bucket}")
    key = index.decode()
    record = rig.get_json(key)
    if not record or record.get("answer_id") != answer_id:
        raise RehearsalError(f"the answer index points at {key}, which holds no answer {answer_id}")
    record["_key"] = key
    return dict(record)


def feedback_for(rig: Rig, answer_id: str) -> list[tuple[str, dict[str, Any]]]:
    from core.records import FEEDBACK_PREFIX

    found = [(key, rig.get_json(key)) for key in rig.keys(FEEDBACK_PREFIX)]
    return [(key, event) for key, event in found if event and event.get("answer_id") == answer_id]


# --- the walk -------------------------------------------------------------------------------------------


def step_template(rig: Rig) -> str:
    """The routes and queue consumers the walk relies on are the template's."""
    mounted = {route: f.spec.handler for route, f in rig.routes.items()}
    for route, handler in EXPECTED_ROUTES.items():
        if mounted.get(route) != handler:
            raise RehearsalError(f"template.yaml routes {route} to {mounted.get(route)}, the walk expects {handler}")
    ask_queue = _ask_queue_id(rig)
    poller = rig.pollers.get(ask_queue)
    if poller is None or poller.function.spec.handler != ASK_WORKER:
        raise RehearsalError(f"no function with {ASK_WORKER} consumes {ask_queue} (ASK_QUEUE_URL) in template.yaml")
    if not poller.reports:
        raise RehearsalError(f"{ask_queue}'s event source lacks ReportBatchItemFailures")
    routes = ", ".join(f"{r} -> {h}" for r, h in sorted(mounted.items()))
    return (f"{routes}; {ask_queue} -> {poller.function.spec.handler} (BatchSize {poller.batch}, "
            f"ReportBatchItemFailures); {len(rig.functions)} functions, each in its own container")


def _ask_queue_id(rig: Rig) -> str:
    return _queue_id(rig, rig.env_of(DISCORD_ROUTE, "ASK_QUEUE_URL"))


def step_resources(rig: Rig) -> str:
    """Read back from moto what the template asked for: queues, redrive, secrets' JSON shapes."""
    sqs, lines = rig.stack.sqs, []
    for lid, made in sorted(rig.stack.physical.items()):
        if "QueueUrl" not in made:
            continue
        attrs = sqs.get_queue_attributes(QueueUrl=made["QueueUrl"], AttributeNames=["All"])["Attributes"]
        props = rig.stack.resolve(rig.stack.resources[lid].get("Properties", {}))
        if bool(props.get("FifoQueue")) != (attrs.get("FifoQueue") == "true"):
            raise RehearsalError(f"{lid} on moto is not the FIFO/standard queue the template defines")
        text = f"{lid}{' (FIFO)' if attrs.get('FifoQueue') == 'true' else ''}"
        if "RedrivePolicy" in attrs:
            policy = json.loads(attrs["RedrivePolicy"])
            dlq = next(d for d, m in rig.stack.physical.items() if m.get("Arn") == policy["deadLetterTargetArn"])
            text += f" -> {dlq} after {policy['maxReceiveCount']}"
        lines.append(text)
    for var, keys in SECRET_KEYS.items():
        arn = next((f.spec.env[var] for f in rig.functions.values() if var in f.spec.env), None)
        if arn is None:
            raise RehearsalError(f"no function gets {var} from template.yaml")
        value = json.loads(rig.stack.secretsmanager.get_secret_value(SecretId=arn)["SecretString"])
        if set(value) != keys or not all(value.values()):
            raise RehearsalError(f"the secret behind {var} holds {sorted(value)}, the code reads {sorted(keys)}")
        lines.append(f"{var} secret {{{', '.join(sorted(keys))}}}")
    return f"bucket {rig.bucket}; " + "; ".join(lines)


def step_knowledge_base(rig: Rig) -> str:
    """Built before the walk (rehearse.ingest_examples), with the Slack function's settings."""
    return str(rig.facts["ingested"])


def step_slack_url_check(rig: Rig) -> str:
    """Slack's Request URL check is answered, and signatures are really verified."""
    challenge = secrets.token_urlsafe(16)
    body = json.dumps({"token": "legacy", "challenge": challenge, "type": "url_verification"})
    reply, _ = rig.slack.send(body)
    if reply.status != 200 or (reply.json() or {}).get("challenge") != challenge:
        raise rig.refused("the URL check", reply)
    forged, _ = rig.slack.send(body, secret=secrets.token_hex(16))
    if forged.status != 401:
        raise RehearsalError(f"a request signed with another secret got {forged.status}, not 401")
    return "challenge echoed (200); the same request signed with another secret got 401"


def step_slack_question(rig: Rig) -> str:
    """An app_mention is acked, answered by the lazy self-invocation, posted and recorded."""
    from tests.support_slack import BOT_ID, BOT_USER_ID, event_callback

    question = "연차는 며칠이야?"
    fake = rig.slack.fake
    message = fake.user_message(SLACK_CHANNEL, SLACK_USER, f"<@{BOT_USER_ID}> {question}")
    event = {"type": "app_mention", "user": SLACK_USER, "text": message["text"], "ts": message["ts"],
             "channel": SLACK_CHANNEL, "event_ts": message["ts"]}
    before = len(rig.lambda_service.outcomes)
    reply, ack_s = rig.slack.send(event_callback(event, event_id=f"Ev{uuid.uuid4().hex[:10].upper()}"))
    if reply.status != 200:
        raise rig.refused("the app_mention", reply)
    rig.lazy_work_done(before)
    answers = [m for m in fake.thread(SLACK_CHANNEL, message["ts"]) if m.get("bot_id") == BOT_ID]
    if len(answers) != 1 or not answers[0].get("edited"):
        raise RehearsalError(f"expected one answer (posted, then chat.update) in the thread, found {len(answers)}")
    answer = answers[0]
    record = answer_record(rig, "slack", SLACK_CHANNEL, answer["ts"])
    if record["abstained"] or not record["contexts"] or record.get("spaces") != ["hr"]:
        raise RehearsalError(f"the answer abstained or cited nothing from space hr: {one_line(answer['text'])}")
    rig.facts.update(slack_answer_ts=answer["ts"], slack_answer_id=record["answer_id"])
    return (f"acked in {ack_s:.2f} s; answer posted in the thread and stored at {record['_key']}: "
            f"{json.dumps(one_line(answer['text'], 200), ensure_ascii=False)}")


def step_slack_reaction(rig: Rig) -> str:
    """A 👍 on the answer becomes one feedback event in the bucket."""
    from tests.support_slack import BOT_USER_ID, event_callback

    answer_ts, answer_id = rig.facts["slack_answer_ts"], rig.facts["slack_answer_id"]
    event = {"type": "reaction_added", "user": SLACK_USER, "reaction": "+1", "item_user": BOT_USER_ID,
             "item": {"type": "message", "channel": SLACK_CHANNEL, "ts": answer_ts},
             "event_ts": rig.slack.fake.next_ts()}
    before = len(rig.lambda_service.outcomes)
    reply, ack_s = rig.slack.send(event_callback(event, event_id=f"Ev{uuid.uuid4().hex[:10].upper()}"))
    if reply.status != 200:
        raise rig.refused("reaction_added", reply)
    rig.lazy_work_done(before)
    events = feedback_for(rig, answer_id)
    if len(events) != 1 or events[0][1]["label"] != 1 or events[0][1]["platform"] != "slack":
        raise RehearsalError(f"expected one +1 feedback event for answer {answer_id}, found {len(events)}")
    return f"acked in {ack_s:.2f} s; feedback event label +1 at s3://{rig.bucket}/{events[0][0]}"


def step_slack_retrain(rig: Rig) -> str:
    """An admin's /retrain puts a job on the training FIFO queue and its record in the bucket."""
    from core.jobs import job_key
    from tests.support_slack import slash_command

    fake, trigger = rig.slack.fake, f"rehearsal-{uuid.uuid4().hex[:8]}"
    body = slash_command("/retrain", "", user=SLACK_ADMIN, channel=SLACK_CHANNEL,
                         response_url=fake.response_url(trigger), trigger_id=trigger)
    before = len(rig.lambda_service.outcomes)
    reply, ack_s = rig.slack.send(body, "application/x-www-form-urlencoded")
    if reply.status != 200:
        raise rig.refused("/retrain", reply)
    encoding = "base64" if rig.door.events[-1]["isBase64Encoded"] else "text"
    rig.lazy_work_done(before)
    said = [r for r in fake.responses if r["url"].endswith(f"/{trigger}")]
    if not said or said[-1].get("response_type") != "in_channel":
        raise RehearsalError(f"/retrain was not announced in the channel: {said[-1] if said else 'no response'}")
    queue_url = rig.env_of(SLACK_ROUTE, "TRAINING_QUEUE_URL")
    jobs = [json.loads(m["Body"]) for m in rig.peek(queue_url)]
    mine = [j for j in jobs if j.get("requested_by") == f"slack:{SLACK_ADMIN}"]
    if len(mine) != 1:
        raise RehearsalError(f"expected one training job from slack:{SLACK_ADMIN} on the queue, found {len(mine)}")
    job_id = mine[0]["job_id"]
    status = rig.get_json(job_key(job_id))
    if not status or status.get("state") != "queued":
        raise RehearsalError(f"job {job_id} has no queued record at {job_key(job_id)}: {status}")
    return (f"acked in {ack_s:.2f} s (form body handed over as {encoding}); job {job_id[:8]} on "
            f"{queue_url.rsplit('/', 1)[-1]}, {job_key(job_id)} state queued; the channel was told "
            f"{json.dumps(one_line(said[-1].get('text', ''), 120), ensure_ascii=False)}")


def step_discord_ping(rig: Rig) -> str:
    """Discord's endpoint check (PING) is answered, and a bad signature is refused."""
    from nacl.signing import SigningKey

    from tests.support_discord import APPLICATION_ID, snowflake

    ping = {"id": snowflake(), "application_id": APPLICATION_ID, "type": 1, "token": "ping", "version": 1}
    reply, elapsed = rig.discord.send(ping)
    if reply.status != 200 or reply.json() != {"type": 1}:
        raise rig.refused("PING", reply)
    forged, _ = rig.discord.send(ping, key=SigningKey.generate())
    if forged.status != 401:
        raise RehearsalError(f"a PING signed with another key got {forged.status}, not 401")
    return f"PONG in {elapsed:.2f} s; the same PING signed with another key got 401"


def step_discord_ask(rig: Rig) -> str:
    """/ask is deferred, queued, answered by the worker from the ask queue, and the reply edited."""
    from tests.support_discord import CHANNEL_ID, ask_interaction

    payload = ask_interaction("When do production deploys happen?", channel_id=CHANNEL_ID)
    ask_queue = rig.pollers[_ask_queue_id(rig)]
    before = len(ask_queue.outcomes)
    reply, elapsed = rig.discord.send(payload)
    if reply.status != 200 or reply.json() != {"type": 5}:
        raise rig.refused("/ask", reply)
    fake = rig.discord.fake
    outcome = wait_for(partial(ask_queue.outcome, before + 1), "the worker got no ask-queue batch")
    if outcome.error or outcome.failed_ids:
        raise RehearsalError(f"the worker failed the batch: {one_line(outcome.error or outcome.failed_ids)}")
    if rig.depth(ask_queue.url):
        raise RehearsalError("the ask message is still on the queue after the worker succeeded")
    message = fake.messages[payload["token"]]
    if message.get("flags") or not message.get("embeds"):
        raise RehearsalError("the deferred reply was not edited with an answer")
    record = answer_record(rig, "discord", CHANNEL_ID, message["id"])
    if record["abstained"] or record.get("spaces") != ["eng"]:
        raise RehearsalError(f"the answer abstained or did not use space eng: {one_line(message['embeds'])}")
    rig.facts.update(discord_message=dict(message), discord_answer_id=record["answer_id"])
    text = message["embeds"][0].get("description", "")
    return (f"deferred in {elapsed:.2f} s; the worker consumed the ask-queue message (no batch failures, "
            f"queue empty) and edited the reply: {json.dumps(one_line(text, 200), ensure_ascii=False)}")


def step_discord_feedback(rig: Rig) -> str:
    """The answer's 👍 button becomes one feedback event in the bucket."""
    from bots.discord.render import parse_feedback_custom_id
    from tests.support_discord import button_interaction

    message, answer_id = rig.facts["discord_message"], rig.facts["discord_answer_id"]
    buttons = [c for row in message.get("components", []) for c in row.get("components", [])]
    thumbs = next((b for b in buttons if (parse_feedback_custom_id(b.get("custom_id", "")) or ("",))[0] == "+1"), None)
    if thumbs is None:
        raise RehearsalError("the answer carries no 👍 button")
    reply, elapsed = rig.discord.send(button_interaction(thumbs["custom_id"], message))
    body = reply.json() or {}
    if reply.status != 200 or body.get("type") != 4 or not body.get("data", {}).get("flags"):
        raise rig.refused("the 👍 click", reply)
    events = feedback_for(rig, answer_id)
    if len(events) != 1 or events[0][1]["label"] != 1 or events[0][1]["platform"] != "discord":
        raise RehearsalError(f"expected one +1 Discord feedback event for answer {answer_id}, found {len(events)}")
    return (f"answered in {elapsed:.2f} s with an ephemeral {json.dumps(body['data'].get('content', ''), ensure_ascii=False)}; "
            f"feedback event label +1 at s3://{rig.bucket}/{events[0][0]}")


def step_discord_retry(rig: Rig) -> str:
    """Discord down for every attempt: the item fails and stays on the queue, is redelivered, the
    last attempt (QUEUE_MAX_RECEIVES) apologises, and the redrive (maxReceiveCount) moves it to the DLQ."""
    from tests.support_discord import CHANNEL_ID, ask_interaction

    queue_id = _ask_queue_id(rig)
    poller = rig.pollers[queue_id]
    policy = json.loads(rig.stack.sqs.get_queue_attributes(
        QueueUrl=poller.url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"])
    dlq_url, receives = rig.stack.queue_url(policy["deadLetterTargetArn"]), int(policy["maxReceiveCount"])
    payload = ask_interaction("How do I roll back a deploy?", channel_id=CHANNEL_ID)
    rig.discord.fake.fail_next("PATCH", *[503] * receives)  # every attempt's answer edit fails
    before = len(poller.outcomes)
    reply, _ = rig.discord.send(payload)
    if reply.status != 200 or reply.json() != {"type": 5}:
        raise rig.refused("/ask", reply)
    for attempt in range(1, receives + 1):
        outcome = wait_for(partial(poller.outcome, before + attempt),
                           f"delivery {attempt} of the ask message never reached the worker")
        if not outcome.failed_ids:
            raise RehearsalError(f"delivery {attempt} succeeded although Discord answered 503")
        if rig.depth(poller.url) != 1:
            raise RehearsalError(f"after failed delivery {attempt} the message is not on {queue_id} any more")
        poller.redeliver_now(outcome)  # instead of waiting out the queue's visibility timeout
    dead = wait_for(lambda: rig.peek(dlq_url), f"the message never reached the DLQ after {receives} deliveries")
    if len(dead) != 1 or json.loads(dead[0]["Body"]).get("interaction_id") != payload["id"]:
        raise RehearsalError(f"the DLQ holds {len(dead)} messages, not this ask")
    shown = rig.discord.fake.messages[payload["token"]]
    if shown.get("flags") or shown.get("embeds") or not shown.get("content"):
        raise RehearsalError("the last attempt did not tell the user it failed (QUEUE_MAX_RECEIVES vs maxReceiveCount?)")
    rig.facts["dead_letters"] = {_queue_id(rig, dlq_url): 1}
    return (f"{receives} deliveries failed and each left the message on {queue_id}; the last one told the user "
            f"{json.dumps(one_line(shown['content'], 100), ensure_ascii=False)}; then it moved to "
            f"{_queue_id(rig, dlq_url)} (maxReceiveCount {receives})")


def _queue_id(rig: Rig, url: str) -> str:
    return next(lid for lid, made in rig.stack.physical.items() if made.get("QueueUrl") == url)


def step_dead_letters(rig: Rig) -> str:
    """Nothing else failed: no async invocation gave up, and the DLQs and failure queues hold only
    what the retry step sent there."""
    failed = [o for o in rig.lambda_service.outcomes if o.error]
    if failed:
        raise RehearsalError(f"{len(failed)} async invocation(s) failed: {one_line(failed[0].error)}")
    expected: dict[str, int] = rig.facts.get("dead_letters", {})
    found = {lid: rig.depth(rig.stack.physical[lid]["QueueUrl"]) for lid in dead_letter_queues(rig)}
    wrong = [f"{lid} holds {n}" for lid, n in found.items() if n != expected.get(lid, 0)]
    if wrong:
        raise RehearsalError(f"unexpected dead letters: {', '.join(wrong)}")
    held = ", ".join(f"{lid} {n}" for lid, n in sorted(found.items()))
    return f"{len(rig.lambda_service.outcomes)} async invocations succeeded; dead letters as expected ({held})"


def dead_letter_queues(rig: Rig) -> list[str]:
    """The queues failures are sent to: RedrivePolicy targets and the functions' OnFailure destinations."""
    targets = {f.spec.on_failure_arn for f in rig.functions.values()}
    for lid, made in rig.stack.physical.items():
        if "QueueUrl" in made:
            policy = rig.stack.resolve(rig.stack.resources[lid].get("Properties", {})).get("RedrivePolicy") or {}
            targets.add(policy.get("deadLetterTargetArn"))
    return sorted(lid for lid, made in rig.stack.physical.items() if "QueueUrl" in made and made["Arn"] in targets)


STEPS: list[tuple[str, Callable[[Rig], str]]] = [
    ("template", step_template),
    ("resources", step_resources),
    ("knowledge base", step_knowledge_base),
    ("slack url check", step_slack_url_check),
    ("slack question", step_slack_question),
    ("slack reaction", step_slack_reaction),
    ("slack retrain", step_slack_retrain),
    ("discord ping", step_discord_ping),
    ("discord ask", step_discord_ask),
    ("discord feedback", step_discord_feedback),
    ("discord retry", step_discord_retry),
    ("dead letters", step_dead_letters),
]
