"""Block Kit for answers: the answer in `markdown` blocks, sources as links, within Slack's limits.

The answer (the model's Markdown, or the documents' sentences) goes into `markdown` blocks, which
Slack renders as standard Markdown, with mentions and broadcasts defused; what we write ourselves
(sources, the context line, headers) stays `mrkdwn` with Slack's escaping. Blocks are built with
`slack_sdk.models.blocks`, whose `to_dict` checks their limits. Slack's limits: markdown blocks at
most 12,000 characters per message together, a section's text 3000, a message 50 blocks, the
fallback `text` 40,000. An answer that does not fit one message continues in further messages of
the same thread; the first message is the one the answer record points at (the one people react to).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from slack_sdk.models.blocks import (
    ContextBlock,
    DividerBlock,
    MarkdownBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bots.slack.feedback import feedback_block
from rag.types import AgentAnswer, Citation

SECTION_LIMIT = 3000
BLOCK_LIMIT = 50
TEXT_LIMIT = 40_000
MARKDOWN_LIMIT = 12_000  # all markdown blocks of one message together
# Per message: answer blocks leave room for a header, a divider, two source sections, the context
# and the feedback buttons.
_BLOCKS_PER_MESSAGE = BLOCK_LIMIT - 6
_MAX_SOURCES = 10

_PLACEHOLDER = {"ko": "찾아보는 중… :hourglass_flowing_sand:", "en": "Looking… :hourglass_flowing_sand:"}
_SOURCES = {"ko": "출처", "en": "Sources"}
_FAILED = {
    "ko": ":warning: 답변을 만드는 중에 문제가 생겼습니다. 답이 곧 나타나지 않으면 다시 물어봐 주세요.",
    "en": ":warning: Something went wrong while answering. If no answer appears here soon, please ask again.",
}
_GAVE_UP = {
    "ko": ":warning: 이 질문에는 지금 답할 수 없습니다. 관리자에게 알려 주세요.",
    "en": ":warning: I can't answer this one right now; please let an admin know.",
}
_EMPTY = {
    "ko": "무엇이 궁금하신가요? 멘션 뒤에 질문을 적어 주세요.",
    "en": "What would you like to know? Write your question after the mention.",
}
_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_MENTION_TOKEN = re.compile(r"<(?=[!@#])")  # <!here>, <@U1>, <#C1>: what Slack's markup would ping
_SENTENCE_END = re.compile(r"(?<=[.!?。다요])\s+")
_SAFE_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f/?#][^\s\x00-\x1f\x7f]*$", re.IGNORECASE)
_LINK_URL_LIMIT = 1000  # longer URLs are shown unlinked: a source line must fit SECTION_LIMIT // 2
_LINK_TITLE_LIMIT = 200
# Slack's own markup in incoming text: <@U123>, <#C1|name>, <http://x|label>, <!here>
_SLACK_TOKEN = re.compile(r"<([^<>]+)>")


@dataclass
class SlackMessage:
    """One chat.postMessage / chat.update payload."""

    text: str
    blocks: list[dict] = field(default_factory=list)


def placeholder_text(language: str) -> str:
    return _PLACEHOLDER.get(language, _PLACEHOLDER["en"])


def transient_texts() -> set[str]:
    """Placeholder and failure wordings: history skips them (not turns of the conversation)."""
    return set(_PLACEHOLDER.values()) | set(_FAILED.values()) | set(_GAVE_UP.values())


def failure_text(language: str) -> str:
    """A transient failure: the platform retries, so the answer may still come."""
    return _FAILED.get(language, _FAILED["en"])


def gave_up_text(language: str) -> str:
    """A permanent failure: no retry will come; internals stay in the log."""
    return _GAVE_UP.get(language, _GAVE_UP["en"])


def empty_question_text(language: str) -> str:
    return _EMPTY.get(language, _EMPTY["en"])


def escape_mrkdwn(text: str) -> str:
    """Escape Slack's control characters and defuse broadcast mentions.

    After escaping `<` no `<!channel>`/`<!here>`/`<@U…>` token can survive; a bare `@channel` gets a
    zero-width joiner so no client or `link_names` setting turns it into a notification.
    """
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub(lambda m: "@\u2060" + m.group(1), escaped)


def neutralise_mentions(text: str) -> str:
    """Markdown for a `markdown` block with nothing that notifies: a word joiner after the `<` of a
    `<!here>`/`<@U…>`/`<#C…>` token and after the `@` of `@channel`; it looks the same."""
    return _BROADCAST.sub(lambda m: "@\u2060" + m.group(1), _MENTION_TOKEN.sub("<\u2060", text))


def split_text(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Pieces of at most `limit` characters, cut at paragraph, line, sentence, then word boundaries."""
    text = text.strip()
    if not text:
        return []
    pieces: list[str] = []
    while len(text) > limit:
        window = text[:limit]
        cut = -1
        for pattern in ("\n\n", "\n"):
            cut = window.rfind(pattern)
            if cut > limit // 3:
                break
        if cut <= limit // 3:
            ends = [m.end() for m in _SENTENCE_END.finditer(window)]
            cut = ends[-1] if ends and ends[-1] > limit // 3 else window.rfind(" ")
        if cut <= limit // 3:
            cut = limit
        # never cut inside an HTML entity (&amp;) that escaping produced
        amp = window.rfind("&", max(0, cut - 6), cut)
        if amp != -1 and ";" not in window[amp:cut]:
            cut = amp
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        pieces.append(text)
    return pieces


def _section(text: str) -> dict:
    return SectionBlock(text=MarkdownTextObject(text=text)).to_dict()


def _markdown(text: str) -> dict:
    return MarkdownBlock(text=text).to_dict()


def _link_target(url: str) -> str:
    """`url` as the target of a `<target|label>` link, or "" when it is not http(s) or too long:
    `&` escaped, and `<`, `>`, `|` (which would end the link early) percent-encoded."""
    url = url.strip()
    if not _SAFE_URL.match(url) or len(url) > _LINK_URL_LIMIT:
        return ""
    return re.sub(r"[<>|]", lambda m: f"%{ord(m.group()):02X}", url).replace("&", "&amp;")


def _citation_line(citation: Citation) -> str:
    """`[n]` and the source: a link to the document's URL when it has one, else its title, file
    and location. Always within SECTION_LIMIT // 2, so `sources_blocks` never cuts a link."""
    raw_title = citation.title or citation.source or citation.doc_id
    location = f" · {escape_mrkdwn(citation.location)}" if citation.location else ""
    target = _link_target(citation.url) or _link_target(citation.source)
    if target:
        # `|` would end the label: a look-alike keeps the title readable
        label = escape_mrkdwn(raw_title[:_LINK_TITLE_LIMIT]).replace("|", "¦")
        line = f"`[{citation.n}]` <{target}|{label}>{location}"
        if len(line) <= SECTION_LIMIT // 2:
            return line
    title = escape_mrkdwn(raw_title)
    source = citation.source.strip()
    if source and source != citation.title:
        # a file path or s3:// key: the folder and file name say enough (and leak no local layout)
        short = "/".join(PurePosixPath(source.replace("\\", "/")).parts[-2:]) if "/" in source or "\\" in source else source
        where = escape_mrkdwn(short).replace("`", "'")
        label = f"*{title}* · `{where}`"
    else:
        label = f"*{title}*"
    return f"`[{citation.n}]` {label}{location}"


def sources_blocks(citations: list[Citation], language: str) -> list[dict]:
    """A header plus one line per cited passage, packed into at most two sections."""
    if not citations:
        return []
    lines = [f"*{_SOURCES.get(language, _SOURCES['en'])}*"]
    lines += [_citation_line(c)[: SECTION_LIMIT // 2] for c in citations[:_MAX_SOURCES]]
    sections: list[str] = []
    current = ""
    for line in lines:
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > SECTION_LIMIT:
            sections.append(current)
            current = line
        else:
            current = candidate
    sections.append(current)
    return [_section(s) for s in sections[:2]]


def context_text(answer: AgentAnswer, elapsed_s: float | None = None) -> str:
    """`model · adapter v3 · 2.1 s`: which model (and LoRA adapter) produced the answer."""
    parts = [f"model: {escape_mrkdwn(answer.model or 'extractive')}"]
    if answer.adapter_version:
        parts.append(f"adapter: {escape_mrkdwn(str(answer.adapter_version))}")
    if elapsed_s is not None:
        parts.append(f"{elapsed_s:.1f} s")
    return " · ".join(parts)


def tail_blocks(answer: AgentAnswer, elapsed_s: float | None = None) -> list[dict]:
    """What goes under the answer's text: the sources, the context line."""
    sources = sources_blocks(answer.citations, answer.language)
    context = ContextBlock(elements=[MarkdownTextObject(text=context_text(answer, elapsed_s))]).to_dict()
    return [DividerBlock().to_dict(), *sources, context] if sources else [context]


def render_answer(
    answer: AgentAnswer, *, header: str | None = None, elapsed_s: float | None = None
) -> list[SlackMessage]:
    """Block Kit messages for an answer: markdown blocks, then sources and the context line; the
    first message (the one people vote on) ends with the 👍/👎 buttons.

    `header` (already mrkdwn) leads the first message, e.g. the quoted question of an `/ask`.
    """
    pieces = split_text(neutralise_mentions(answer.text)) or ["…"]
    messages: list[SlackMessage] = []
    group: list[str] = []
    size = 0
    for piece in pieces:
        if group and (len(group) >= _BLOCKS_PER_MESSAGE or size + len(piece) > MARKDOWN_LIMIT):
            messages.append(_body_message(group))
            group, size = [], 0
        group.append(piece)
        size += len(piece)
    messages.append(_body_message(group))
    if header:
        messages[0].blocks.insert(0, _section(header))
        messages[0].text = f"{header}\n\n{messages[0].text}"
    messages[-1].blocks.extend(tail_blocks(answer, elapsed_s))
    messages[0].blocks.append(feedback_block(answer.language))  # votes go to the message the record names
    for message in messages:
        message.text = message.text[:TEXT_LIMIT]
    return messages


def _body_message(pieces: list[str]) -> SlackMessage:
    """Markdown blocks, and the same text (Slack-escaped) as the notification fallback."""
    return SlackMessage(text=escape_mrkdwn("\n\n".join(pieces)), blocks=[_markdown(p) for p in pieces])


def notice_blocks(text: str) -> SlackMessage:
    """A one-section message for short notices (placeholder, failure, usage hints)."""
    return SlackMessage(text=text, blocks=[_section(text)])


def slack_to_plain(text: str, bot_user_id: str | None = None) -> str:
    """Incoming Slack text → plain text for the agent: the bot's mention dropped, links and
    mentions turned into their labels, entities unescaped."""

    def token(match: re.Match[str]) -> str:
        inner = match.group(1)
        target, _, label = inner.partition("|")
        if target.startswith("@"):
            return "" if bot_user_id and target[1:] == bot_user_id else f"@{label or target[1:]}"
        if target.startswith("#"):
            return f"#{label or target[1:]}"
        if target.startswith("!"):
            return f"@{label or target[1:].split('^')[0]}"
        return f"{label} ({target})" if label and label != target else target

    return html.unescape(_SLACK_TOKEN.sub(token, text)).strip()
