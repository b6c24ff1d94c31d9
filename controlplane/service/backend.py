"""A shared backend (session registry, durable audit stream) failing: 503, retryable."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from controlplane.errors import Unavailable
from sessions.errors import SessionError

__all__ = ["backend"]


@contextlib.contextmanager
def backend(what: str) -> Iterator[None]:
    """A retryable ``SessionError`` becomes ``Unavailable`` (503) naming ``what`` failed."""
    try:
        yield
    except SessionError as exc:
        if not exc.retryable:
            raise
        raise Unavailable(f"{what}: {exc}", code="backend_unavailable") from exc
