"""Turn a follow-up in a thread into a standalone question, so retrieval sees what it is about.

With an LLM the model rewrites it (the usual "condense question" step). Without one, a deterministic
rule: a follow-up that leans on the earlier turn (그거/그럼/거기/it/that/what about…) or is
elliptical (few content words, and no sign of a new topic: a language switch, a complete English
sentence, a name the thread has not used) gets the earlier question's salient terms (names, nouns, foreign words,
numbers) put in front. "그럼 입사 첫해에는?" after "연차 휴가는 며칠이야?" becomes
"연차 휴가 그럼 입사 첫해에는?" — enough for BM25 and the extractive scorer to find the right passage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from rag.language import detect_language
from rag.llm import LLM, LLMError
from rag.prompts import condense_messages
from rag.text import analyse
from rag.types import Turn

log = logging.getLogger(__name__)

_KO_REFERENCE = re.compile(
    r"(^|\s)(그거|그건|그게|그걸|그것|그럼|그러면|그렇다면|그때|거기|거긴|이거|이건|이것|저거|저건|그분|그 사람|그곳|"
    r"해당|위의|그런데|그리고|그 외|나머지|또는|또|그래서)"
)
_EN_REFERENCE = re.compile(
    r"\b(it|its|that|this|they|them|their|those|these|there|he|she|his|her|what about|how about|and|also|"
    r"then|same)\b",
    re.I,
)
_SALIENT_TAGS = frozenset({"NNP", "NNG", "SL", "SN", "XR", "SH"})
# A question with at most this many content terms of its own is elliptical ("그럼 신청은?").
_ELLIPTICAL_TERMS = 2
_MAX_CARRIED_TERMS = 5


# A finite verb makes an English question complete ("What is SEV1?"), where "Days for contractors?" is not.
_EN_FINITE = re.compile(
    r"\b(is|are|was|were|am|do|does|did|can|could|should|would|will|shall|may|might|must|has|have|had)\b", re.I
)
_ENTITY_TAGS = frozenset({"NNP", "SL", "SH"})


def is_follow_up(question: str, earlier: Sequence[str] = ()) -> bool:
    """Whether a question leans on the conversation. `earlier`: the thread's user turns, oldest first.

    A reference (그럼, 그거, it, what about…) makes it a follow-up. A question that stands on its own
    is never one: it switches language from the last turn, is a complete English sentence, or (in
    Korean) names something the thread has not ("SEV1이 뭐예요?"). Otherwise few words of its own
    ("병가는?") mean it is elliptical."""
    if _KO_REFERENCE.search(question) or _EN_REFERENCE.search(question):
        return True
    language = detect_language(question)
    if earlier and detect_language(earlier[-1]) != language:
        return False
    if language == "en" and _EN_FINITE.search(question):
        return False
    forms, tags = analyse([question])[0]
    if language == "ko" and earlier:
        seen = " ".join(earlier).lower()
        if any(tag in _ENTITY_TAGS and len(form) > 1 and form.lower() not in seen for form, tag in zip(forms, tags, strict=True)):
            return False
    return len(set(forms)) <= _ELLIPTICAL_TERMS


def _salient_terms(text: str, exclude: set[str]) -> list[str]:
    # Question words ("며칠" of the earlier question) are no topic: they are stop words (rag.text).
    forms, tags = analyse([text])[0]
    picked: list[str] = []
    for form, tag in zip(forms, tags, strict=True):
        if tag not in _SALIENT_TAGS or form in exclude or form in picked:
            continue
        if tag in ("NNG", "NNP") and len(form) < 2:  # 주, 일, 곳: too vague to carry a topic
            continue
        picked.append(form)
    return picked


def condense_rule(question: str, history: Sequence[Turn]) -> str:
    """Deterministic condensation: carry the earlier question's salient terms into a follow-up."""
    user_turns = [turn.text for turn in history if turn.role == "user" and turn.text.strip()]
    if not user_turns or not is_follow_up(question, user_turns):
        return question
    own = set(analyse([question])[0][0])
    carried: list[str] = []
    # The latest user turn first; an earlier one too when the latest was itself elliptical.
    for text in reversed(user_turns[-2:]):
        for term in _salient_terms(text, own):
            if term not in carried:
                carried.append(term)
        if len(carried) >= 2:
            break
    if not carried:
        return question
    return f"{' '.join(carried[:_MAX_CARRIED_TERMS])} {question}"


def _clean_rewrite(text: str) -> str:
    for line in text.splitlines():
        line = re.sub(
            r"^(standalone question|question|follow-up|질문)\s*[:：]\s*", "", line.strip(), flags=re.I
        )
        line = line.strip().strip("\"“”'")
        if line:
            return line
    return ""


def condense(question: str, history: Sequence[Turn], *, llm: LLM | None, language: str) -> str:
    """The standalone question: the LLM's rewrite when one is configured (falling back to the rule
    when it fails or answers nothing), otherwise the deterministic rule."""
    if not any(turn.role == "user" for turn in history):
        return question
    if llm is None:
        return condense_rule(question, history)
    pairs = [(turn.role, turn.text) for turn in history[-6:]]
    try:
        rewritten = _clean_rewrite(llm.complete(condense_messages(question, pairs, language), max_tokens=128))
    except LLMError as exc:
        log.warning("condense with the LLM failed, using the rule instead: %s", exc)
        rewritten = ""
    return rewritten or condense_rule(question, history)
