"""The one spelling of semantic-ID tokens, shared by the SID exports and the generative model."""

from __future__ import annotations

import string


def level_name(level: int) -> str:
    """a, b, c, ... (then l26, l27, ...): the letter of a level in SID tokens like ``<a_12>``."""
    return string.ascii_lowercase[level] if level < 26 else f"l{level}"


def token(level: int, code: int | str) -> str:
    """The token of one code at one level (``code`` may be a format placeholder, ``"{}"``)."""
    return f"<{level_name(level)}_{code}>"
