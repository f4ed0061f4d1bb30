"""Which language a question is in, so the answer (and an abstention) comes back in the same one.

Only Korean and English are first-class: a text is Korean when Hangul makes up a fair share of its
letters (a Korean question often carries Latin product names, so a plain majority would misfire).
"""

from __future__ import annotations

from core.contracts import Language

# Korean questions about software are full of Latin words ("Slack 봇 토큰은?"): 20% Hangul is Korean.
_KOREAN_SHARE = 0.2


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F


def hangul_share(text: str) -> float:
    """Hangul characters over all letters (digits, punctuation and spaces ignored)."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for ch in letters if _is_hangul(ch)) / len(letters)


def detect_language(text: str) -> Language:
    """ "ko" when the text is meaningfully Korean, otherwise "en"."""
    return "ko" if hangul_share(text) >= _KOREAN_SHARE else "en"


def written_in(text: str, language: str) -> bool:
    """Whether an answer is in the asker's language: a Korean answer is Korean by `detect_language`
    (Latin product names allowed), an English one is not mostly Hangul (a quoted Korean term
    allowed). Too short to tell (under 20 letters): yes."""
    if sum(1 for ch in text if ch.isalpha()) < 20:
        return True
    share = hangul_share(text)
    return share >= _KOREAN_SHARE if language == "ko" else share < 0.5
