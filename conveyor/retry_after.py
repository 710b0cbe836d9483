"""A server's ``Retry-After`` as a retry's delay (the ``retry_after=`` option of tasks).

When a call fails with an exception that is retried, the task's ``retry_after(exc)`` is
asked first: a number of seconds is the retry's delay (no backoff, no jitter: the server
said when), capped by ``retry_max_delay``; ``None`` falls back to the backoff. The
default, :func:`read_retry_after`, reads the ``Retry-After`` header (RFC 9110, section
10.2.3: delay-seconds, or an HTTP date) of the response an HTTP client's exception
carries: aiohttp's ``ClientResponseError`` (``exc.headers``), httpx's
``HTTPStatusError`` and requests' ``HTTPError`` (``exc.response.headers``). Neither
library is imported: the exception is read by its attributes. ``retry_after=None``
turns it off (the backoff alone).
"""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

__all__ = ["parse_retry_after", "read_retry_after"]


def read_retry_after(exc: BaseException) -> float | None:
    """The seconds a response's ``Retry-After`` asks to wait, from an HTTP client's
    exception (see the module's docstring); ``None`` if it carries none, or one that
    cannot be read."""
    headers = getattr(exc, "headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get("Retry-After")
        if value is None:  # (a plain dict is case-sensitive)
            value = headers.get("retry-after")
    except Exception:  # (not a mapping after all)
        return None
    return parse_retry_after(value) if isinstance(value, str) else None


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds to wait for a ``Retry-After`` value: delay-seconds (``"120"``), or an HTTP
    date (``"Wed, 21 Oct 2015 07:28:00 GMT"``) less ``now`` (``time.time()``: a date is
    on the wall clock), at least 0; ``None`` if it is neither."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        seconds = float(value)  # (not the RFC's form, but unambiguous: "1.5")
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # (RFC 9110: HTTP dates are in GMT)
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def check_retry_after(name: str, value: Any) -> Any:
    """The ``retry_after`` option: a function of the exception, or ``None``."""
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be a function of the exception returning seconds to wait (or None "
            f"to use the backoff), or None to ignore Retry-After; got {value!r}; e.g. "
            f"{name}=lambda exc: 5.0 if getattr(exc, 'status', None) == 429 else None"
        )
    return value
