"""The labels a gateway connection carries, from four sources (docs/integrations.md#labels).

- ``credential``: the operator's mapping of API keys to label sets
  (``--credential-labels-file``): a multi-tenant platform labels its tenants' sessions with no
  client change. The file holds the sha256 of each key, never the key;
- ``path``: ``/labels/{k=v,k=v}/v3/ws`` and ``/labels/{k=v,k=v}/v1/ws`` (each key and value
  URL-encoded): every client that takes a base URL can carry labels;
- ``header``: ``X-Session-Labels: k=v,k=v``;
- ``query``: ``?cp_labels=k=v,k=v`` (never forwarded upstream).

Every source follows the ``X-Session-Labels`` rules (``parse_labels``). Precedence is
credential > path > header > query, and it is a precedence of authority, not of overriding:
a lower source may repeat a label a higher one gave, never change it. A key given two
different values refuses the connection (``LabelConflict`` names the key and both sources),
so a client can never relabel itself out of the tenant its key belongs to. The merged set
obeys the same limit as one source (``MAX_LABELS``).

A relabel (``PATCH /v1/sessions/{id}/labels``, and the owner request that carries it to
another replica) follows the REST rules (``LABEL_KEY``, ``MAX_LABEL_VALUE_CHARS``,
``MAX_LABELS_PER_PATCH``; ``relabel_problem``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import unquote

from policies.fields import utf8_problem

__all__ = [
    "LABEL_KEY",
    "MAX_LABELS",
    "MAX_LABELS_PER_PATCH",
    "MAX_LABEL_VALUE_CHARS",
    "SOURCES",
    "CredentialLabels",
    "LabelConflict",
    "LabelsUnavailable",
    "MemoryTokenLabels",
    "TokenLabelStore",
    "credential_of",
    "key_digest",
    "merge_labels",
    "parse_credential_labels",
    "parse_labels",
    "parse_path_labels",
    "relabel_problem",
]

log = logging.getLogger(__name__)

MAX_LABELS: Final = 32
LABEL_KEY: Final = re.compile(r"[A-Za-z0-9_.-]{1,63}")  # a relabel's keys (REST)
MAX_LABEL_VALUE_CHARS: Final = 256
MAX_LABELS_PER_PATCH: Final = 64
SOURCES: Final = ("credential", "path", "header", "query")  # precedence, highest first
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_DIGEST: Final = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")


class LabelConflict(ValueError):
    """Two sources give one label key different values."""

    def __init__(self, key: str, first: tuple[str, str], second: tuple[str, str]) -> None:
        self.key = key
        super().__init__(
            f"label {key!r} is {first[1]!r} from the {first[0]} but {second[1]!r} from the "
            f"{second[0]}: a connection's label sources may repeat a label, never change it"
        )


def _check(item: str, key: str, value: str, sep: str) -> None:
    if not sep or not key or len(key) > 63 or len(value) > 256:
        shown = item[:80].encode("utf-8", "backslashreplace").decode()
        raise ValueError(f"label {shown!r} must be key=value (key ≤ 63, value ≤ 256)")
    # header bytes that are not UTF-8 arrive as lone surrogates: no log or hash takes them
    if utf8_problem(item) is not None or _CONTROL.search(item):
        raise ValueError("labels must be UTF-8 text without control characters")


def relabel_problem(labels: object) -> str | None:
    """What breaks the relabel rules in ``{key: value or None}`` (None: nothing); the REST
    API says it field by field (controlplane.api.labels), an owner request in one line."""
    if not isinstance(labels, dict) or not labels or len(labels) > MAX_LABELS_PER_PATCH:
        return f"labels must be an object of 1 to {MAX_LABELS_PER_PATCH} key -> string or null"
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            return "a label key must match [A-Za-z0-9_.-]{1,63}"
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_CHARS:
            return f"label {key!r} must be a string of at most {MAX_LABEL_VALUE_CHARS} characters"
        if _CONTROL.search(value):
            return f"label {key!r} must not contain control characters"
    return None


def _limit(labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels, limit is {MAX_LABELS}")


def parse_labels(raw: str) -> dict[str, str]:
    """``k=v,k=v`` -> dict; raises ValueError naming the bad item."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        _check(item, key, value, sep)
        labels[key] = value
    _limit(labels)
    return labels


def parse_path_labels(segment: str) -> dict[str, str]:
    """The raw (still URL-encoded) ``{labels}`` path segment -> dict: split on ``,`` and the
    first ``=`` before decoding, so an encoded ``%2C`` or ``%3D`` stays inside a value."""
    labels: dict[str, str] = {}
    for part in segment.split(","):
        if not part.strip():
            continue
        raw_key, sep, raw_value = part.partition("=")
        try:
            key = unquote(raw_key, errors="strict").strip()
            value = unquote(raw_value, errors="strict").strip()
        except UnicodeDecodeError:
            raise ValueError("labels must be UTF-8 text without control characters") from None
        _check(f"{key}={value}" if sep else key, key, value, sep)
        labels[key] = value
    _limit(labels)
    return labels


def merge_labels(sources: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Merge labels by source name (``SOURCES``); raises LabelConflict or ValueError (limit)."""
    merged: dict[str, str] = {}
    origin: dict[str, str] = {}
    for source in SOURCES:
        for key, value in sources.get(source, {}).items():
            if key in merged and merged[key] != value:
                raise LabelConflict(key, (origin[key], merged[key]), (source, value))
            merged.setdefault(key, value)
            origin.setdefault(key, source)
    _limit(merged)
    return merged


def key_digest(key: str) -> str:
    """What the credential-labels file stores for an API key: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def credential_of(authorization: str | None) -> str | None:
    """The key or token in an ``Authorization`` value (``Bearer `` stripped), if any."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    credential = rest.strip() if scheme.lower() == "bearer" else authorization.strip()
    return credential or None


def parse_credential_labels(
    text: str, *, source: str = "credential labels"
) -> dict[str, dict[str, str]]:
    """Lines ``<sha256 hex of the key> k=v,k=v`` (``#`` comments, blank lines) -> {digest:
    labels}; ValueError names the line. A key itself (not 64 hex digits) is refused without
    being echoed."""
    table: dict[str, dict[str, str]] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, raw = line.partition(" ")
        found = _DIGEST.fullmatch(digest.strip())
        if found is None:
            raise ValueError(
                f"{source} line {number}: must start with the sha256 hex digest of an API key "
                '(64 hex digits; e.g. printf %s "$KEY" | sha256sum), then k=v,k=v'
            )
        try:
            labels = parse_labels(raw.strip())
        except ValueError as exc:
            raise ValueError(f"{source} line {number}: {exc}") from None
        if not labels:
            raise ValueError(f"{source} line {number}: no labels after the digest")
        key = found.group(1).lower()
        if key in table:
            raise ValueError(f"{source} line {number}: digest repeated (first seen earlier)")
        table[key] = labels
    return table


class LabelsUnavailable(Exception):
    """The shared token-label store cannot answer: the connection is refused (503) rather
    than started without labels a compliance policy may target."""


class TokenLabelStore(Protocol):
    """Where the labels of minted tokens live: this replica (``MemoryTokenLabels``) or all
    replicas (``sessions.redis_tokens.RedisTokenLabels``). Keys are token digests."""

    async def put(self, digest: str, labels: Mapping[str, str], ttl_s: float) -> None: ...

    async def get(self, digest: str) -> dict[str, str] | None: ...


class MemoryTokenLabels:
    """Token labels on this replica only: at most ``MAX_TOKENS``, expired ones pruned first."""

    __slots__ = ("_clock", "_tokens")
    MAX_TOKENS: Final = 100_000

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens: dict[str, tuple[float, dict[str, str]]] = {}  # digest -> (until, labels)

    async def put(self, digest: str, labels: Mapping[str, str], ttl_s: float) -> None:
        now = self._clock()
        if len(self._tokens) >= self.MAX_TOKENS:
            for old in [d for d, (until, _) in self._tokens.items() if until <= now]:
                del self._tokens[old]
            while len(self._tokens) >= self.MAX_TOKENS:  # oldest first
                del self._tokens[next(iter(self._tokens))]
        self._tokens[digest] = (now + ttl_s, dict(labels))

    async def get(self, digest: str) -> dict[str, str] | None:
        until, labels = self._tokens.get(digest, (0.0, {}))
        return dict(labels) if until > self._clock() else None


class CredentialLabels:
    """The credential-labels file, re-read when it changes (mtime and size). A file that
    turns unreadable or malformed while serving keeps the last good table (logged): labels
    that target compliance policies must not silently vanish.

    Temporary tokens minted through the gateway (``GET /v3/token``, ``/v1/token``) with a
    mapped key carry that key's labels until their redemption window ends
    (``remember_token``, ``for_token``; digests only), kept in ``tokens``: this replica's
    memory, or Redis in distributed mode so any replica honours them."""

    __slots__ = ("_path", "_stamp", "_table", "tokens")

    def __init__(self, path: Path | None, tokens: TokenLabelStore) -> None:
        self._path = path
        self.tokens = tokens
        self._stamp: tuple[int, int] | None = None
        self._table: dict[str, dict[str, str]] = {}
        if path is not None:
            self._table = parse_credential_labels(path.read_text(encoding="utf-8"),
                                                  source=str(path))  # fmt: skip
            stat = path.stat()
            self._stamp = (stat.st_mtime_ns, stat.st_size)

    @property
    def configured(self) -> bool:
        return self._path is not None

    def _current(self) -> dict[str, dict[str, str]]:
        path = self._path
        if path is None:
            return self._table
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._table = parse_credential_labels(path.read_text(encoding="utf-8"),
                                                      source=str(path))  # fmt: skip
                self._stamp = stamp
        except (OSError, ValueError) as exc:
            log.warning("credential labels %s not reloaded, keeping the last good table: %s",
                        path, exc)  # fmt: skip
        return self._table

    def for_credential(self, credential: str | None) -> dict[str, str]:
        """The labels of an API key (empty when unmapped or no credential)."""
        if credential is None:
            return {}
        table = self._current()
        if not table:
            return {}
        return dict(table.get(key_digest(credential), {}))

    async def for_token(self, credential: str | None) -> dict[str, str]:
        """The labels of a token minted with a mapped key (empty when none); raises
        LabelsUnavailable (Redis down) rather than answering without them."""
        if credential is None or not self.configured:
            return {}
        try:
            return await self.tokens.get(key_digest(credential)) or {}
        except Exception as exc:
            raise LabelsUnavailable(f"token labels cannot be read: {exc}") from exc

    async def remember_token(self, key: str, token: str, expires_in_s: float) -> bool:
        """A token minted with ``key``: it carries the key's labels for ``expires_in_s``
        (its redemption window). False when the key has no labels (nothing kept)."""
        labels = self.for_credential(key)
        if not labels:
            return False
        await self.tokens.put(key_digest(token), labels, expires_in_s)
        return True
