"""`echorag serve discord`: the discord.py gateway process.

Discord delivers reactions only over the gateway websocket, so this long-running process is what
turns 👍/👎 reactions on the bot's answers into feedback. It also serves `/ask`, `/retrain` and the
feedback buttons when no Interactions Endpoint URL is set (once one is set, Discord sends those to
the endpoint instead and these handlers simply never fire). Every blocking call (store, queue, agent,
REST) runs in a worker thread so the websocket heartbeat never stalls.

A message in the thread of one of the bot's answers is a follow-up (`answer_in_thread`). Intents:
guilds, reactions and guild messages, none of them privileged; without the privileged
MESSAGE_CONTENT intent Discord only shows the text of messages that mention the bot, so by default
those are the follow-ups, and with DISCORD_MESSAGE_CONTENT (and the intent switched on in the
Developer Portal) every message in such a thread is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from typing import Any

import discord
from discord import app_commands

from bots.discord.ask_worker import ThreadQuestion, answer_ask, answer_in_thread, is_answer_thread
from bots.discord.commands import ASK_ABOUT, COMMANDS
from bots.discord.heartbeat import BEAT_EVERY_S, beat, heartbeat_path
from bots.discord.interactions import Handled, button_feedback, message_question, retrain
from bots.discord.render import EPHEMERAL, FOLLOW_UP_PREFIX, answer_id_of, message_response
from bots.discord.runtime import DiscordRuntime, resolve_settings
from core.contracts import AskJob, FeedbackEvent
from core.errors import ConfigError, EchoRagError, TransientError
from core.feedback import record_reaction
from core.settings import Settings

log = logging.getLogger(__name__)

_TRY_AGAIN = "⚠️ That did not work on our side; please try again in a moment."
_FOLLOW_UP_NEEDS_ENDPOINT = ("Follow-ups from this button need the Interactions endpoint (see docs/discord.md); "
                             "ask again with /ask meanwhile.")
REACTION_RETRY_WAITS_S = (0.5, 2.0, 8.0)
THREAD_RETRY_WAITS_S = (1.0, 4.0)  # a thread follow-up: three attempts, the last quoting the documents
TYPING_EVERY_S = 8.0  # Discord shows "typing…" for about 10 s after each call


def reaction_feedback(
    payload: discord.RawReactionActionEvent,
    runtime: DiscordRuntime,
    *,
    bot_user_id: int | None,
    received_at: float | None = None,
) -> FeedbackEvent | None:
    """A raw reaction add/remove as feedback; None for the bot's own reactions, messages another
    author wrote, and anything record_reaction does not count (not an answer, unmapped emoji).

    Gateway reaction events carry no timestamp or id, so the receipt time (ms) is the event time:
    it orders add/remove/re-add correctly (a re-add after a removal is a new event), and the same
    delivery handled twice with the same receipt time is stored once."""
    if bot_user_id is not None and payload.user_id == bot_user_id:
        return None
    if bot_user_id is not None and payload.message_author_id not in (None, bot_user_id):
        return None  # add events name the message's author: skip the store lookup for others' messages
    if not payload.emoji.name:
        return None
    return record_reaction(
        platform="discord",
        channel=str(payload.channel_id),
        message_id=str(payload.message_id),
        user_id=str(payload.user_id),
        reaction=payload.emoji.name,
        action="added" if payload.event_type == "REACTION_ADD" else "removed",
        event_ts=f"{time.time() if received_at is None else received_at:.3f}",
        settings=runtime.settings,
        store=runtime.store,
        queue=runtime.training_queue,
    )


class GatewayBot(discord.Client):
    """Reactions → feedback; `/ask`, `/retrain` and 👍/👎 buttons when they arrive over the gateway."""

    def __init__(self, settings: Settings, runtime: DiscordRuntime | None = None) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_reactions = True
        intents.dm_reactions = True
        intents.guild_messages = True  # follow-ups in answer threads
        intents.message_content = settings.discord_message_content  # privileged: the portal must allow it
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.settings = settings
        self.runtime = runtime or DiscordRuntime(settings)
        self.tree = app_commands.CommandTree(self)
        self._add_commands()
        self._heartbeat: asyncio.Task[None] | None = None

    async def setup_hook(self) -> None:
        self._heartbeat = asyncio.create_task(self._beat_forever())

    # --- liveness ------------------------------------------------------------------------------
    def beat_once(self) -> bool:
        """Touch the liveness file when connected and ready (a finite websocket latency means a
        heartbeat was acknowledged); True when it did."""
        alive = self.is_ready() and not self.is_closed() and math.isfinite(self.latency)
        if alive:
            beat(heartbeat_path(self.settings.data_dir))
        return alive

    async def _beat_forever(self) -> None:
        while not self.is_closed():
            self.beat_once()
            await asyncio.sleep(BEAT_EVERY_S)

    # --- reactions -----------------------------------------------------------------------------
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload)

    async def _reaction(self, payload: discord.RawReactionActionEvent) -> FeedbackEvent | None:
        """Discord never redelivers a gateway event, so this process is the retry: a transient
        failure is tried again (the same receipt time keeps the feedback id, so nothing doubles)."""
        bot_id = self.user.id if self.user else None
        received_at = time.time()
        for attempt, wait_s in enumerate((*REACTION_RETRY_WAITS_S, None), start=1):
            try:
                event = await asyncio.to_thread(
                    reaction_feedback, payload, self.runtime, bot_user_id=bot_id, received_at=received_at
                )
                break
            except TransientError as exc:
                if wait_s is None:
                    log.error("reaction on message %s lost after %d attempts: %s", payload.message_id, attempt, exc)
                    return None
                log.warning("reaction on message %s not recorded yet (%s); retrying in %.1fs",
                            payload.message_id, exc, wait_s)
                await asyncio.sleep(wait_s)
            except EchoRagError:
                log.exception("reaction on message %s could not be recorded", payload.message_id)
                return None
        if event is not None:
            log.info("feedback %s %s on answer %s", event.action, event.reaction, event.answer_id)
        return event

    # --- follow-ups in answer threads ------------------------------------------------------------
    def thread_question(self, message: discord.Message) -> ThreadQuestion | None:
        """The follow-up `message` asks, or None: only people's messages in a thread, mentioning the
        bot unless the content intent is on (without it, other messages arrive with no text)."""
        me, thread = self.user, message.channel
        if me is None or message.author.bot or not isinstance(thread, discord.Thread):
            return None
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return None  # "thread created", pins and other system messages
        mentioned = any(user.id == me.id for user in message.mentions)
        if not (mentioned or self.settings.discord_message_content):
            return None
        question = re.sub(rf"<@!?{me.id}>", " ", message.content).strip()
        if not question:
            return None
        return ThreadQuestion(
            message_id=str(message.id), thread_id=str(thread.id), parent_id=str(thread.parent_id),
            guild_id=str(thread.guild.id), user_id=str(message.author.id), question=question,
            bot_thread=thread.owner_id == me.id,
        )

    async def on_message(self, message: discord.Message) -> None:
        question = self.thread_question(message)
        if question is not None:
            await self.answer_thread_message(question, message.channel)

    async def answer_thread_message(self, question: ThreadQuestion, channel: discord.abc.Messageable) -> None:
        """Answer in a worker thread, showing "typing…" meanwhile. A gateway event is never
        redelivered after a reconnect, so this process is the retry: a failure is tried again (the
        claim and the saved reply make that safe; a duplicate delivery is skipped by the claim)."""
        typing: asyncio.Task[None] | None = None
        try:
            for wait_s in (*THREAD_RETRY_WAITS_S, None):
                try:
                    if typing is None:  # not in threads that are not the bot's
                        if not await asyncio.to_thread(is_answer_thread, question, self.runtime):
                            return
                        typing = asyncio.create_task(_keep_typing(channel))
                    outcome = await asyncio.to_thread(answer_in_thread, question, self.runtime,
                                                      last_attempt=wait_s is None)
                    log.info("thread message %s: %s", question.message_id, outcome.status)
                    return
                except Exception as exc:  # the last attempt told the user (never the error)
                    if wait_s is None:
                        log.exception("thread message %s not answered", question.message_id)
                        return
                    log.warning("thread message %s not answered yet (%s); retrying in %.1fs",
                                question.message_id, exc, wait_s)
                    await asyncio.sleep(wait_s)
        finally:
            if typing is not None:
                typing.cancel()

    # --- slash commands and buttons ----------------------------------------------------------
    def _add_commands(self) -> None:
        spec = {c["name"]: c for c in COMMANDS}
        ask_spec, retrain_spec = spec["ask"], spec["retrain"]
        anywhere = (app_commands.allowed_installs(guilds=True, users=True),
                    app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True))

        @self.tree.command(name="ask", description=ask_spec["description"])
        @app_commands.describe(question=ask_spec["options"][0]["description"])
        @anywhere[0]
        @anywhere[1]
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await self.ask(interaction, question)

        @self.tree.command(name="retrain", description=retrain_spec["description"])
        @app_commands.describe(force=retrain_spec["options"][0]["description"])
        @app_commands.default_permissions(manage_guild=True)
        @app_commands.guild_only()
        async def retrain_command(interaction: discord.Interaction, force: bool = False) -> None:
            await self.retrain(interaction, force=force)

        @self.tree.context_menu(name=ASK_ABOUT)
        @anywhere[0]
        @anywhere[1]
        async def ask_about(interaction: discord.Interaction, message: discord.Message) -> None:
            question = message_question({"content": message.content,
                                         "embeds": [e.to_dict() for e in message.embeds]})
            if not question:
                await interaction.response.send_message("That message has no text to ask about.", ephemeral=True)
                return
            await self.ask(interaction, question)

    async def ask(self, interaction: discord.Interaction, question: str) -> None:
        """Defer at once (the 3-second rule), then the same code as the Lambda worker edits the reply."""
        await interaction.response.defer(thinking=True)
        job = AskJob(
            interaction_id=str(interaction.id),
            application_id=str(interaction.application_id),
            token=interaction.token,
            channel_id=str(interaction.channel_id),
            space_channel_id=str(interaction.channel.parent_id or "")
            if isinstance(interaction.channel, discord.Thread) else "",
            guild_id=str(interaction.guild_id or ""),
            user_id=str(interaction.user.id),
            question=question.strip(),
            locale=str(interaction.locale),
        )
        try:
            await asyncio.to_thread(answer_ask, job, self.runtime, last_attempt=True)
        except Exception:  # answer_ask already replaced "thinking…" with an apology
            log.exception("/ask interaction %s failed", interaction.id)

    async def retrain(self, interaction: discord.Interaction, *, force: bool = False) -> None:
        try:
            handled = await asyncio.to_thread(
                retrain,
                user_id=str(interaction.user.id),
                channel_id=str(interaction.channel_id),
                permissions=interaction.permissions.value,
                runtime=self.runtime,
                force=force,
            )
        except EchoRagError:
            log.exception("/retrain interaction %s failed", interaction.id)
            handled = Handled(message_response(_TRY_AGAIN, ephemeral=True), "retrain_failed")
        await _respond(interaction, handled)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is not discord.InteractionType.component or interaction.message is None:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if answer_id_of(custom_id, FOLLOW_UP_PREFIX) is not None:  # its modal needs the Interactions endpoint
            await _respond(interaction, Handled(message_response(_FOLLOW_UP_NEEDS_ENDPOINT, ephemeral=True),
                                                "follow_up_asked"))
            return
        try:
            handled = await asyncio.to_thread(
                button_feedback,
                custom_id=custom_id,
                channel_id=str(interaction.channel_id),
                message_id=str(interaction.message.id),
                user_id=str(interaction.user.id),
                interaction_id=str(interaction.id),
                korean=str(interaction.locale).startswith("ko"),
                runtime=self.runtime,
            )
        except EchoRagError as exc:  # not our button, or the store is down: say so, never crash
            log.warning("button %r not recorded: %s", custom_id[:100], exc)
            handled = Handled(message_response(_TRY_AGAIN, ephemeral=True), "feedback_failed")
        await _respond(interaction, handled)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await super().close()
        self.runtime.close()


async def _keep_typing(channel: discord.abc.Messageable) -> None:
    """Keep "typing…" showing until cancelled; it is only a hint, so a failure is merely logged."""
    while True:
        try:
            await channel.typing()
        except discord.HTTPException as exc:
            log.debug("typing indicator failed: %s", exc)
        await asyncio.sleep(TYPING_EVERY_S)


async def _respond(interaction: discord.Interaction, handled: Handled) -> None:
    data: dict[str, Any] = handled.response.get("data", {})
    await interaction.response.send_message(
        data.get("content", ""),
        ephemeral=bool(data.get("flags", 0) & EPHEMERAL),
        allowed_mentions=discord.AllowedMentions.none(),
    )


def run_gateway(settings: Settings) -> None:
    """Connect and run until interrupted; needs DISCORD_BOT_TOKEN."""
    settings = resolve_settings(settings)
    if not settings.discord_bot_token:
        raise ConfigError("DISCORD_BOT_TOKEN is not set (Developer Portal → your app → Bot → Reset Token)")
    bot = GatewayBot(settings)
    bot.run(settings.discord_bot_token, log_handler=None)
