"""tower's own token estimate: ~4 characters a token, slightly generous.

Used for reservations when no tokenizer is exact, and by the sim models to report their
usage (so a sim reservation is exact). A module of its own: the sim and the litellm
boundary both need it, and neither should import the other for it.
"""

from __future__ import annotations

import json
from typing import Any


def schema_chars(tools: list[dict[str, Any]] | None) -> int:
    return len(json.dumps(tools)) if tools else 0


def estimate_tokens(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tools_chars: int | None = None,
) -> int:
    """A fast, slightly generous token estimate (~4 chars a token) used for reservations.

    The sim models report prompt tokens with this same function, so a sim reservation is exact.
    """
    chars = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content:
            chars += len(json.dumps(content))
        for call in m.get("tool_calls") or ():
            fn = call.get("function", {})
            chars += len(fn.get("name", "")) + len(fn.get("arguments", ""))
    chars += schema_chars(tools) if tools_chars is None else tools_chars
    return chars // 4 + 4 * len(messages) + 3


def text_tokens(text: str) -> int:
    return (len(text) + 3) // 4
