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
from rag.text import Token, analyse, get_kiwi
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


# Chat questions often end in a request rather than the question word: "…상은?? 알려줘", "…뭔지
# 아시는 분?", "…인지 궁금해요". Their verbs (알리다, 알다, 궁금하다) are no topic, but the answer step
# would look for a sentence that "covers" them (and abstain, or quote one that 알려준다). Kiwi's
# tags find the frame however it is spaced or spelt: a telling verb with the benefactive 주다 in a
# request (not past: "누가 알려 주었나?" asks who told), "(아시|아)는 분", 궁금하다.
_TELLING = frozenset({"알리", "말하", "가르치", "설명하", "소개하"})
_TELLING_NOUNS = frozenset({"말", "설명", "소개"})
_TRAILING_TAGS = frozenset({"EF", "EC", "SF", "SW", "SE", "SO", "SS", "ETM"})
_CLOSING_WORDS = frozenset({("시", "EP"), ("수", "NNB"), ("있", "VA"), ("있", "VV")})  # 알려 주실 수 있나요


def _request_frame(toks: Sequence[Token], i: int) -> int | None:
    """Where a request frame starting at token i ends (the index after it), or None."""
    pairs = [(t.form, t.tag.split("-")[0]) for t in toks[i:]]
    if pairs[:1] == [("궁금하", "VA")]:
        return i + 1
    if pairs[:2] == [("궁금", "XR"), ("하", "XSA")]:
        return i + 2
    if pairs[:1] == [("알", "VV")]:  # (아시|아)는 분
        j = 2 if pairs[1:2] == [("시", "EP")] else 1
        return i + j + 2 if pairs[j : j + 2] == [("는", "ETM"), ("분", "NNB")] else None
    if pairs and pairs[0][1] == "NNG" and pairs[0][0] in _TELLING_NOUNS and pairs[1:2] == [("하", "XSV")]:
        pairs, i = pairs[1:], i + 1  # 말해 주세요: 말/NNG 하/XSV
    elif not (pairs and pairs[0][1] == "VV" and pairs[0][0] in _TELLING):
        return None
    return i + 3 if len(pairs) >= 3 and pairs[1][1] == "EC" and pairs[2] == ("주", "VX") else None


def _closes(toks: Sequence[Token]) -> bool:
    """Whether what follows a request frame only finishes the sentence: endings, punctuation, an
    honorific 시, "(ㄹ) 수 있나요" — not a tense (었/았/겠), which makes it a statement."""
    for tok in toks:
        tag = tok.tag.split("-")[0]
        if tag not in _TRAILING_TAGS and (tok.form, tag) not in _CLOSING_WORDS:
            return False
    return True


def without_request(question: str) -> str:
    """The question without a closing request phrase ("…은?? 알려줘" → "…은??"); unchanged when
    nothing would be left of it."""
    toks = get_kiwi().tokenize(question)
    for i in range(len(toks)):
        end = _request_frame(toks, i)
        if end is not None and _closes(toks[end:]):
            head = question[: toks[i].start].rstrip()
            return head if analyse([head])[0][0] else question
    return question


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
