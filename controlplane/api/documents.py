"""Policy documents read without stalling the event loop (issue #19 item 4).

A 1 MiB YAML body parsed on the event loop held ``/healthz`` and every socket for 4-5 s.
A worker thread is not enough: measured on a 1 MiB document of ~30,000 label keys, the parse
in a thread still stalled the loop 0.7-1.1 s, because the hundreds of thousands of objects it
creates trigger full garbage collections (and their release is one long deallocation), all
under the GIL; libyaml's parser holds the GIL for the whole parse anyway.

So a body over ``INLINE_PARSE_BYTES`` is parsed and validated as a policy (``parse_policy``:
an invalid big document is refused without touching the loop) in a worker *process*; the
loop only unpickles the result (the document, or the refusal). At most ``workers`` parses run
at once per replica (later ones wait their turn); bodies are bounded by the REST body limit
(413 above it). Smaller bodies are parsed inline (a 16 KiB document takes about 1 ms).
The pool starts on first use (the forkserver method: never a fork of the running service)
and is shut down with the app.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final

from aiohttp import web

from controlplane.api.inputs import MAX_BODY_BYTES, parse_document, read_body
from controlplane.errors import BadRequest, Unavailable
from policies.errors import PolicyValidationError, Violation
from policies.model import parse_policy

__all__ = ["INLINE_PARSE_BYTES", "DocumentReader", "parse_in_worker"]

log = logging.getLogger(__name__)

INLINE_PARSE_BYTES: Final = 16 * 1024

Outcome = tuple[str, Any]


def parse_in_worker(raw: bytes, content_type: str) -> Outcome:
    """In the worker process: ``("ok", document)``, or the refusal as plain data (our error
    types do not survive pickling with their fields)."""
    gc.disable()  # this process parses one document at a time; full collections over the
    try:  # growing parse made it 3-5x slower
        doc = parse_document(raw, content_type)
        parse_policy(doc)
    except BadRequest as exc:
        return "bad_request", (exc.message, exc.code, exc.details)
    except PolicyValidationError as exc:
        return "invalid", (
            [(v.field, v.rule, v.message, v.limit) for v in exc.violations],
            exc.policy_id,
        )
    finally:
        gc.enable()
    return "ok", doc


def _unwrap(outcome: Outcome) -> dict[str, Any]:
    kind, value = outcome
    if kind == "bad_request":
        message, code, details = value
        raise BadRequest(message, code=code, details=details)
    if kind == "invalid":
        violations, policy_id = value
        raise PolicyValidationError([Violation(*v) for v in violations], policy_id)
    assert isinstance(value, dict)
    return value


class DocumentReader:
    """Reads a policy document (JSON, or YAML by content type) for the REST API; module
    docstring. ``close()`` stops the worker processes."""

    def __init__(self, limit: int = MAX_BODY_BYTES, workers: int = 1) -> None:
        self.limit = limit
        self._workers = workers
        self._gate = asyncio.Semaphore(workers)
        self._pool: ProcessPoolExecutor | None = None

    async def read(self, request: web.Request) -> dict[str, Any]:
        raw = await read_body(request, self.limit)
        if len(raw) <= INLINE_PARSE_BYTES:
            return parse_document(raw, request.content_type)
        async with self._gate:
            pool = self._executor()
            try:
                # submitted from a thread: the first submit starts the forkserver and the
                # worker, which blocks its caller ~0.25 s
                future = await asyncio.to_thread(
                    pool.submit, parse_in_worker, raw, request.content_type
                )
                outcome = await asyncio.wrap_future(future)
            except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh
                self.close()
                log.warning("the policy document parser process died; restarting it")
                raise Unavailable(
                    "the policy document parser stopped while reading this document; retry",
                    code="parser_unavailable",
                ) from None
        return _unwrap(outcome)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(self._workers, mp_context=context)
        return self._pool

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
