"""Error bodies that always render: a 422 never fails on the input it describes.

FastAPI's own 422 echoes each error's ``input`` (and its ``ctx`` and ``msg`` may quote it): a lone
surrogate cannot be encoded as UTF-8, NaN and Infinity are not JSON, and the input may be the whole
body. Here every value of an error is made JSON-safe (surrogates escaped as ``\\udXXX`` text,
non-finite floats and integers beyond 64 bits replaced by a description, exceptions by their
message), the ``input`` is cut to a short excerpt, and only the first :data:`MAX_ERRORS` are kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse

#: The most errors one 422 lists (one more entry says how many were left out).
MAX_ERRORS = 20
#: The longest excerpt of an error's input, as JSON text.
MAX_EXCERPT_CHARS = 200
#: The longest string kept anywhere else in an error (a message, a location, a context value).
MAX_TEXT_CHARS = 500
#: How many items of a list or an object, and how many levels, an excerpt goes into.
MAX_ITEMS = 5
MAX_DEPTH = 3
#: Integers beyond this magnitude are described, not shown (JSON readers lose them).
MAX_SAFE_INT = 2**63


def safe_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` encodable as UTF-8 (a lone surrogate becomes the six characters ``\\ud800``), cut to
    ``limit`` characters."""
    cleaned = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


def json_safe(value: Any, *, text_limit: int = MAX_TEXT_CHARS, depth: int = 0) -> Any:
    """``value`` as something ``json.dumps(..., allow_nan=False)`` encodes and UTF-8 can carry; lists
    and objects are cut to :data:`MAX_ITEMS` items and :data:`MAX_DEPTH` levels."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < MAX_SAFE_INT else f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return safe_text(value, text_limit)
    if isinstance(value, bytes | bytearray):
        return safe_text(bytes(value[: text_limit * 4]).decode("utf-8", "backslashreplace"), text_limit)
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {
            safe_text(str(key), text_limit): json_safe(item, text_limit=text_limit, depth=depth + 1)
            for key, item in items[:MAX_ITEMS]
        }
        if len(items) > MAX_ITEMS:
            out["…"] = f"{len(items) - MAX_ITEMS} more"
        return out
    if isinstance(value, Sequence):
        kept = [json_safe(item, text_limit=text_limit, depth=depth + 1) for item in value[:MAX_ITEMS]]
        return kept + ([f"… {len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else [])
    return safe_text(str(value), text_limit)


def excerpt(value: Any) -> Any:
    """A short, JSON-safe excerpt of an input: the value itself when small, else its JSON text cut
    to :data:`MAX_EXCERPT_CHARS` characters."""
    small = json_safe(value, text_limit=MAX_EXCERPT_CHARS)
    text = json.dumps(small, ensure_ascii=False)
    return small if len(text) <= MAX_EXCERPT_CHARS else text[:MAX_EXCERPT_CHARS] + "…"


def safe_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's (FastAPI's) validation errors made safe to render (see the module doc)."""
    out: list[dict[str, Any]] = []
    for error in errors[:MAX_ERRORS]:
        cleaned: dict[str, Any] = {}
        for key, value in error.items():
            if key == "input":
                cleaned[key] = excerpt(value)
            elif key == "loc":
                cleaned[key] = [part if isinstance(part, int) else safe_text(str(part), 100) for part in value]
            else:
                cleaned[key] = json_safe(value)
        out.append(cleaned)
    if len(errors) > MAX_ERRORS:
        out.append({"type": "too_many_errors", "loc": [], "msg": f"{len(errors) - MAX_ERRORS} more errors not shown"})
    return out


class SafeJSONResponse(JSONResponse):
    """A JSON response that renders whatever it holds: when the plain encoding fails (a lone
    surrogate, NaN), the content goes through :func:`json_safe` first."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, UnicodeEncodeError):
            return super().render(_deep_safe(content))


def _deep_safe(value: Any) -> Any:
    """Like :func:`json_safe`, without cutting anything (for a whole answer)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return json_safe(value)
    if isinstance(value, Mapping):
        return {_deep_safe(str(key)): _deep_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_safe(item) for item in value]
    return value
