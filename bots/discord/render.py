"""Discord message rendering shared by the Interactions Lambda, its worker and the gateway process.

Everything here builds plain JSON payloads for Discord's REST API (no discord.py import), so the
Lambda functions stay light. Limits are Discord's: content 2,000 characters, embed description
4,096, title 256, field value 1,024, and 6,000 characters over all embeds of a message.
Mentions never ping (`allowed_mentions: {"parse": []}`) and `@everyone`/`@here` are defused.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from rag.types import AgentAnswer, Citation

CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024
EMBEDS_TOTAL_LIMIT = 6000
SOURCES_BUDGET = 1800  # characters of the 6,000 kept for the sources list
FOOTER_BUDGET = 200  # Discord allows 2,048; a model name and a version need far less
LINK_URL_LIMIT = 512  # a source's URL longer than this is not linked (it would eat the sources budget)

EPHEMERAL = 64  # message flag: only the invoking user sees it
NO_MENTIONS: dict[str, list[str]] = {"parse": []}

# Interaction types (requests) and callback types (responses).
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, MODAL_SUBMIT = 1, 2, 3, 5
PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL = 1, 4, 5, 9
LABEL, STRING_SELECT, TEXT_INPUT = 18, 3, 4  # modal components: a Label wraps one select or text input

FEEDBACK_PREFIX = "echorag:fb"
FOLLOW_UP_PREFIX = "echorag:fu"  # + ":<answer_id>": the follow-up button and its modal
REASON_PREFIX = "echorag:why"  # + ":<answer_id>": the "what was wrong?" modal of one answer
POSITIVE, NEGATIVE = "+1", "-1"  # the reaction names buttons record (the default emoji map knows them)
_BUTTON_EMOJI = {POSITIVE: "👍", NEGATIVE: "👎"}

_COLOR_ANSWER = 0x5865F2
_COLOR_ABSTAIN = 0x99AAB5

_LABELS = {
    "ko": {"sources": "출처", "model": "모델", "adapter": "어댑터"},
    "en": {"sources": "Sources", "model": "model", "adapter": "adapter"},
}

def escape_mass_mentions(text: str) -> str:
    """Defuse @everyone/@here in the visible text too (allowed_mentions already stops the ping)."""
    return re.sub(r"@(everyone|here)", "@\u200b\\1", text)


_BREAKS = (
    ("\n\n", 0),
    ("\n", 0),
    (". ", 1),
    ("? ", 1),
    ("! ", 1),
    ("。", 1),
    (" ", 0),
)  # (separator, chars kept)


def split_text(text: str, limit: int) -> list[str]:
    """Split into pieces of at most `limit` characters, at the latest paragraph, line, sentence or
    word break that fits (a hard cut only when a single word is longer than the limit)."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = limit
        for sep, keep in _BREAKS:
            at = window.rfind(sep)
            if at > limit // 4:
                cut = at + keep
                break
        piece = rest[:cut].rstrip()
        pieces.append(piece)
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, ending with an ellipsis when something was cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def feedback_custom_id(reaction: str, answer_id: str) -> str:
    """A button's custom_id (≤ 100 chars): which reaction it stands for and which answer it rates."""
    return f"{FEEDBACK_PREFIX}:{reaction}:{answer_id}"


def parse_feedback_custom_id(custom_id: str) -> tuple[str, str] | None:
    """(reaction, answer_id) from a feedback button's custom_id; None for anything else."""
    parts = custom_id.split(":")
    if len(parts) != 4 or f"{parts[0]}:{parts[1]}" != FEEDBACK_PREFIX or parts[2] not in _BUTTON_EMOJI:
        return None
    if not re.fullmatch(r"[0-9a-f]{32}", parts[3]):
        return None
    return parts[2], parts[3]


def feedback_buttons(answer_id: str) -> list[dict[str, Any]]:
    """One action row with 👍/👎 buttons; a click is recorded like the matching reaction."""
    buttons = [
        {
            "type": 2,
            "style": 2,
            "emoji": {"name": emoji},
            "custom_id": feedback_custom_id(reaction, answer_id),
        }
        for reaction, emoji in _BUTTON_EMOJI.items()
    ]
    follow_up = {"type": 2, "style": 2, "label": "Ask a follow-up · 이어서 질문", "emoji": {"name": "💬"},
                 "custom_id": f"{FOLLOW_UP_PREFIX}:{answer_id}"}
    return [{"type": 1, "components": buttons}, {"type": 1, "components": [follow_up]}]


def _link_target(url: str) -> str:
    """`url` as the target of a markdown link `[title](target)`, or "" when it is not http(s) or too
    long for the sources budget: whitespace, `(`, `)`, `<`, `>` and `\\` (which would end or break
    the link) percent-encoded."""
    url = url.strip()
    if not re.match(r"https?://[^/?#\s]", url, re.IGNORECASE) or len(url) > LINK_URL_LIMIT:
        return ""
    return re.sub(r"[\s()<>\\]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), url)


def _source_line(citation: Citation) -> str:
    """`[n]` and the source: a markdown link to the document's URL when it has one, else its title,
    file name and location."""
    # `[`/`]` in the title would end (or nest) the link text, so they become parentheses
    title = escape_mass_mentions(citation.title or citation.source or citation.doc_id)
    title = title.replace("[", "(").replace("]", ")")
    line = f"[{citation.n}] "
    target = _link_target(citation.url) or _link_target(citation.source)
    if target:
        line += f"[{truncate(title, 200)}]({target})"
    else:  # a file: its name only (server paths are nobody's business)
        line += truncate(title, 200)
        name = PurePath(citation.source).name if citation.source else ""
        if name and name != citation.title:
            line += f" · `{truncate(name, 120)}`"
    if citation.location:
        line += f" — {truncate(citation.location, 80)}"
    return line


def footer_text(answer: AgentAnswer) -> str:
    labels = _LABELS.get(answer.language, _LABELS["en"])
    text = f"{labels['model']}: {answer.model}"
    if answer.adapter_version:
        text += f" · {labels['adapter']}: {answer.adapter_version}"
    return truncate(text, FOOTER_BUDGET)


def _source_fields(answer: AgentAnswer) -> list[dict[str, Any]]:
    """Sources as fields of whole lines, within SOURCES_BUDGET characters ("… +N" beyond)."""
    labels = _LABELS.get(answer.language, _LABELS["en"])
    lines: list[str] = []
    used = 0
    for i, citation in enumerate(answer.citations):
        line = _source_line(citation)
        if used + len(line) + 1 > SOURCES_BUDGET - 20:
            lines.append(f"… +{len(answer.citations) - i}")
            break
        lines.append(line)
        used += len(line) + 1
    chunks = split_text("\n".join(lines), FIELD_VALUE_LIMIT)  # none when the answer abstained
    return [
        {"name": labels["sources"] if i == 0 else f"{labels['sources']} ({i + 1})", "value": chunk, "inline": False}
        for i, chunk in enumerate(chunks)
    ]


def answer_embeds(answer: AgentAnswer) -> list[dict[str, Any]]:
    """The answer as embeds: question as title, answer in the description (continued in further
    embeds past 4,096), sources as fields, model/adapter in the footer. The answer gets what the
    other parts leave of Discord's 6,000-character budget and is cut at a sentence or word break."""
    color = _COLOR_ABSTAIN if answer.abstained else _COLOR_ANSWER
    title = truncate(escape_mass_mentions(answer.question.strip()), TITLE_LIMIT) or "…"
    footer = {"text": footer_text(answer)}
    fields = _source_fields(answer)
    used = len(title) + len(footer["text"]) + sum(len(f["name"]) + len(f["value"]) for f in fields)
    budget = EMBEDS_TOTAL_LIMIT - used
    text = escape_mass_mentions(answer.text.strip()) or "…"
    if len(text) > budget:
        text = split_text(text, budget - 2)[0] + " …"
    body = split_text(text, DESCRIPTION_LIMIT)
    embeds: list[dict[str, Any]] = [{"title": title, "description": body[0], "color": color}]
    embeds += [{"description": piece, "color": color} for piece in body[1:]]
    embeds[-1]["fields"] = fields
    embeds[-1]["footer"] = footer
    return embeds


def render_answer(answer: AgentAnswer, *, answer_id: str | None) -> dict[str, Any]:
    """A message payload (for PATCH …/messages/@original or a channel message) with 👍/👎 buttons
    when the answer was recorded (they carry its id)."""
    payload: dict[str, Any] = {
        "content": "",
        "embeds": answer_embeds(answer),
        "allowed_mentions": NO_MENTIONS,
    }
    payload["components"] = feedback_buttons(answer_id) if answer_id else []
    return payload


def render_notice(text: str) -> dict[str, Any]:
    """A plain message payload (errors, retrain outcomes) within the 2,000-character content limit."""
    return {
        "content": truncate(escape_mass_mentions(text), CONTENT_LIMIT),
        "embeds": [],
        "components": [],
        "allowed_mentions": NO_MENTIONS,
    }


def message_response(text: str, *, ephemeral: bool = False) -> dict[str, Any]:
    """An interaction callback that answers at once with a message (type 4)."""
    data = render_notice(text)
    del data["embeds"], data["components"]
    if ephemeral:
        data["flags"] = EPHEMERAL
    return {"type": CHANNEL_MESSAGE, "data": data}


_REASON_TEXT = {
    "ko": {"title": "무엇이 잘못되었나요?", "reason": "이유", "details": "자세히 (선택)",
           "wrong": "틀렸어요", "outdated": "오래된 정보", "not_in_docs": "문서에 없어요", "incomplete": "부족해요",
           "other": "기타"},
    "en": {"title": "What was wrong?", "reason": "Reason", "details": "Details (optional)",
           "wrong": "Wrong", "outdated": "Outdated", "not_in_docs": "Not in the documents", "incomplete": "Incomplete",
           "other": "Other"},
}


def reason_modal(answer_id: str, reasons: tuple[str, ...], *, korean: bool) -> dict[str, Any]:
    """The MODAL callback a 👎 click answers with: a reason select and optional details. Closing it
    keeps the 👎 without a reason."""
    text = _REASON_TEXT["ko" if korean else "en"]
    return {"type": MODAL, "data": {
        "custom_id": f"{REASON_PREFIX}:{answer_id}",
        "title": text["title"],
        "components": [
            {"type": LABEL, "label": text["reason"], "component": {
                "type": STRING_SELECT, "custom_id": "reason", "min_values": 1, "max_values": 1,
                "options": [{"label": text[code], "value": code} for code in reasons]}},
            {"type": LABEL, "label": text["details"], "component": {
                "type": TEXT_INPUT, "custom_id": "details", "style": 2, "required": False, "max_length": 500}},
        ],
    }}


def parse_reason_submit(data: dict[str, Any]) -> tuple[str, str, str] | None:
    """(answer_id, reason code, details) from a submitted reason modal's `data`; None if it is not one."""
    answer_id = answer_id_of(str(data.get("custom_id", "")), REASON_PREFIX)
    fields = modal_fields(data)
    values = fields.get("reason")
    if answer_id is None or not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
        return None
    details = fields.get("details")
    return answer_id, values[0], details if isinstance(details, str) else ""


def answer_id_of(custom_id: str, prefix: str) -> str | None:
    """The answer id in a `<prefix>:<answer_id>` custom_id (a button's or a modal's); None otherwise."""
    head, _, answer_id = custom_id.rpartition(":")
    return answer_id if head == prefix and re.fullmatch(r"[0-9a-f]{32}", answer_id) else None


def follow_up_modal(answer_id: str, *, korean: bool) -> dict[str, Any]:
    """The MODAL a follow-up button opens: one question, answered with the conversation so far."""
    return {"type": MODAL, "data": {
        "custom_id": f"{FOLLOW_UP_PREFIX}:{answer_id}",
        "title": "이어서 질문하기" if korean else "Ask a follow-up",
        "components": [{"type": LABEL, "label": "질문" if korean else "Question", "component": {
            "type": TEXT_INPUT, "custom_id": "question", "style": 2, "required": True, "max_length": 1000}}],
    }}


def modal_fields(data: dict[str, Any]) -> dict[str, Any]:
    """custom_id -> a select's values or a text input's value, from a submitted modal's Labels."""
    fields: dict[str, Any] = {}
    for label in data.get("components") or []:
        inner = label.get("component") if isinstance(label, dict) else None
        if isinstance(inner, dict) and isinstance(inner.get("custom_id"), str):
            fields[inner["custom_id"]] = inner.get("values") if "values" in inner else inner.get("value")
    return fields
