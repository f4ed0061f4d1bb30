"""Questions the way people type them in Slack: a deterministic, rule-based rewriter.

KorQuAD's questions are written Korean ("…은 무엇인가?", "…한 사람은?"); people in a chat ask "혹시
…뭐야?", drop spaces and contract verbs. The rewrites are made at run time from the question (the
dataset's license allows no derived copies to be kept), seeded by its id, so every run sees the same
rewrite. Each question gets its ending rewritten and, by chance, a filler word, a request phrase or
a missing space. Used by `bench/answer_folds.py --colloquial`.
"""

from __future__ import annotations

import random
import re
import zlib

# Written endings → what people type (each rule's alternatives are picked by the question's seed).
_ENDINGS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    (re.compile(r"\s*무엇(?:인가|입니까|인가요|이었나|이었는가|일까)\?$"), (" 뭐야?", " 뭔가요?", " 뭐였지?", " 뭐임?")),
    (re.compile(r"\s*누구(?:인가|입니까|인가요|였나|였는가)\?$"), (" 누구야?", " 누구였지?", " 누군가요?")),
    (re.compile(r"\s*어디(?:인가|입니까|인가요|였나|였는가)\?$"), (" 어디야?", " 어디였더라?", " 어딘가요?")),
    (re.compile(r"\s*언제(?:인가|입니까|인가요|였나|였는가)\?$"), (" 언제야?", " 언제였지?", " 언젠가요?")),
    (re.compile(r"\s*얼마(?:인가|입니까|인가요|였나|였는가)\?$"), (" 얼마야?", " 얼마였지?")),
    (re.compile(r"(몇\s*\S+?)(?:인가|입니까|인가요|였나|였는가)\?$"), (r"\1야?", r"\1였지?", r"\1이에요?")),
    (re.compile(r"하였는가\?$"), ("했어?", "했나요?", "했지?")),
    (re.compile(r"되었는가\?$"), ("됐어?", "됐나요?")),
    (re.compile(r"였는가\?$"), ("였어?", "였나요?")),
    (re.compile(r"있는가\?$"), ("있어?", "있나요?")),
    (re.compile(r"하는가\?$"), ("해?", "하나요?", "하냐?")),
    (re.compile(r"는가\?$"), ("나요?", "냐?")),
    (re.compile(r"인가\?$"), ("야?", "인가요?")),
    # a noun phrase asked bare ("…한 사람의 이름은?"): say what is wanted
    (re.compile(r"(은|는)\?$"), (r"\1 뭐야?", r"\1 뭐였지?", r"\1?? 알려줘", r"\1 뭔지 아시는 분?")),
]
_FILLERS = ("혹시 ", "저기 ", "근데 ", "아 ")
_CONTRACTIONS = (("하였", "했"), ("되었", "됐"), ("이었", "였"))


def colloquial(question: str, key: str) -> str:
    """The question as typed in a chat, the same every run for the same `key` (the question id)."""
    rng = random.Random(zlib.crc32(key.encode()))
    text = question.strip()
    for written, spoken in _CONTRACTIONS:
        text = text.replace(written, spoken)
    for pattern, choices in _ENDINGS:
        if pattern.search(text):
            text = pattern.sub(rng.choice(choices), text, count=1)
            break
    if rng.random() < 0.4:
        text = rng.choice(_FILLERS) + text
    spaces = [m.start() for m in re.finditer(" ", text)]
    if spaces and rng.random() < 0.3:  # a missed space, the commonest slip in chat
        at = rng.choice(spaces)
        text = text[:at] + text[at + 1 :]
    if rng.random() < 0.15:
        text = text.rstrip("?") + "?"[: rng.randint(0, 1)]
    return text
