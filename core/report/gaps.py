"""Knowledge gaps: the questions the bot abstained on or people voted 👎, grouped by topic.

A topic is a noun term the questions share (Kiwi morphemes for Korean, stems for English; adjacent
nouns also count as their compound, so "비밀번호" groups with "비밀 번호"). Grouping is a greedy
cover: the term shared by most ungrouped questions forms a group, its questions leave, repeat;
questions sharing no term with another stay single. Why not k-means or embeddings: a docs owner
must see *why* questions sit together, and the shared word says it; a few hundred short questions
need no more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

TOPIC_TAGS = frozenset({"NNG", "NNP", "SL", "SH", "XR"})  # nouns, foreign words, roots: what a question is about
EXAMPLES = 5


@dataclass(frozen=True)
class GapQuestion:
    question: str
    language: str
    abstained: bool
    down: int  # 👎 votes on the answer
    reasons: tuple[str, ...]
    notes: tuple[str, ...]  # what people wrote with their reason
    created_at: datetime


@dataclass
class Gap:
    topic: str  # "비밀번호 · 변경"
    questions: list[GapQuestion]
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.questions)

    @property
    def abstained(self) -> int:
        return sum(q.abstained for q in self.questions)

    @property
    def down(self) -> int:
        return sum(q.down for q in self.questions)

    @property
    def examples(self) -> list[GapQuestion]:
        """The newest distinct questions."""
        seen: dict[str, GapQuestion] = {}
        for q in sorted(self.questions, key=lambda q: q.created_at, reverse=True):
            seen.setdefault(q.question.strip(), q)
        return list(seen.values())[:EXAMPLES]


def topic_terms(text: str) -> set[str]:
    """The question's noun terms, with each run of adjacent nouns also as one compound."""
    from rag.text import get_kiwi, term

    found: set[str] = set()
    run: list[str] = []
    end = -1
    for token in get_kiwi().tokenize(text):
        name = term(token.form, token.tag) if token.tag in TOPIC_TAGS else None
        if name is None:
            run, end = [], -1
            continue
        found.add(name)
        run = [*run, token.form] if token.start == end else [token.form]
        end = token.start + token.len
        if len(run) > 1:
            found.add("".join(run).lower())
    return found


def group_gaps(questions: Sequence[GapQuestion], *, min_group: int = 2) -> list[Gap]:
    """Groups by shared topic (largest first), then the questions that share none, one each."""
    terms = [topic_terms(q.question) for q in questions]
    left = set(range(len(questions)))
    gaps: list[Gap] = []
    while left:
        shared = Counter(t for i in left for t in terms[i])
        if not shared:
            break
        # most questions first; on a tie the longer term (a compound over its parts), then by name
        best, n = max(shared.items(), key=lambda item: (item[1], len(item[0]), item[0]))
        if n < min_group:
            break
        members = sorted(i for i in left if best in terms[i])
        also = Counter(t for i in members for t in terms[i] if t != best and t not in best)
        label = [best, *(t for t, c in also.most_common(2) if c * 2 >= len(members) and c >= min_group)]
        gaps.append(_gap(" · ".join(label), [questions[i] for i in members]))
        left -= set(members)
    for i in sorted(left, key=lambda i: questions[i].created_at, reverse=True):
        topic = max(terms[i], key=lambda t: (len(t), t)) if terms[i] else questions[i].question[:30]
        gaps.append(_gap(topic, [questions[i]]))
    return gaps


def _gap(topic: str, members: list[GapQuestion]) -> Gap:
    return Gap(topic=topic, questions=members, reasons=Counter(r for q in members for r in q.reasons))
