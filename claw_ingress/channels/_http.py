"""Reading platform API answers: the JSON object of a body, the wait a 429 asks for."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import httpx


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body's JSON object; ``{}`` when the body is not JSON or not an object."""
    with contextlib.suppress(ValueError):
        data = response.json()
        if isinstance(data, dict):
            return data
    return {}


def retry_after(response: httpx.Response, default: float = 1.0) -> float:
    """Seconds to wait from the ``Retry-After`` header (at least 0.5), else ``default`` (also
    for ``nan``, which float() takes and nothing can wait)."""
    try:
        seconds = float(response.headers.get("retry-after", default))
    except ValueError:
        return default
    return max(seconds, 0.5) if not math.isnan(seconds) else default
