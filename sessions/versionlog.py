"""The per-session version log: hash chain, verification, and the memory and file backends.

Every config version a session receives (and every status change of it) is one append-only
``LogEntry`` (DESIGN §4 plus ``version``). Entries of a session form a chain::

    hash = sha256(prev_hash + canonical_json(entry without "hash"))   # hex digests
    prev_hash of seq 1 = "0" * 64;  seq = 1, 2, 3, ... per session

``append()`` is synchronous: it chains the entry from an in-memory tail per session and
buffers the write, so the push hot path never awaits I/O. ``flush()`` makes everything
appended so far durable in one batch (group commit); on failure it raises and keeps the batch
for the next attempt, and a flush that is cancelled still finishes its write. ``start()``
runs a background flusher (every ``flush_interval_s``); ``close()`` stops it and flushes.

``FileVersionLog`` layout: ``<directory>/versionlog-YYYY-MM-DD.jsonl``, one file per UTC day
of the *flush* (never going back to an earlier day, so file-name order is write order),
every session in the same files; one line per entry, the entry's canonical JSON (with
``hash``). A flush is one ``write`` of all buffered lines plus one ``fdatasync``. ``start()``
reads every file to rebuild the tails, so chains continue across restarts; a torn last line
(a crash in the middle of a write, never acknowledged) is cut off, saved next to the file as
``<file>.torn`` and reported in ``problems``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, Protocol

from policies.provenance import PolicyRef
from sessions.clock import Clock
from sessions.errors import BackendUnavailable, VersionLogError
from sessions.versionchain import (
    CAUSES,
    GENESIS,
    STATUSES,
    LogEntry,
    VerifyReport,
    canonical_json,
    config_hash,
    verify_entries,
)

__all__ = [
    "CAUSES",
    "GENESIS",
    "STATUSES",
    "BufferedVersionLog",
    "FileVersionLog",
    "LogEntry",
    "MemoryVersionLog",
    "Pending",
    "VerifyReport",
    "VersionLog",
    "canonical_json",
    "config_hash",
    "verify_entries",
]
