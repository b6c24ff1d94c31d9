"""Signed policy events (optional): HMAC-SHA256 over the message id and the exact body.

Whoever may publish to ``<prefix>.policy.>`` publishes policies (docs/distributed.md,
security). With a signing key set (``CONTROLPLANE_POLICY_SIGNING_KEY`` or
``--policy-signing-key-file``), replicas sign what they publish and accept only events that
carry a valid signature, so NATS publish rights alone no longer make a policy.

Wire (an extension of DESIGN.md §4, a NATS header next to ``Nats-Msg-Id``)::

    Cp-Signature: v1=<hex HMAC-SHA256(key, Nats-Msg-Id + "\\n" + body)>

``body`` is the message payload byte for byte (no re-encoding); ``Nats-Msg-Id`` is the
header's value, empty when the message has none, so a signed body cannot be replayed under
another message id. Several ``v1=…`` values may be given, separated by commas.

Keys are text (their UTF-8 bytes are the HMAC key, so ``openssl dgst -hmac "$KEY"`` works),
at least ``MIN_KEY_BYTES`` long, comma- or newline-separated: the first key signs, every key
verifies (rotation: add the new key second, roll out, move it first, roll out, drop the old).
A key file is re-read when it changes (a Kubernetes Secret update needs no restart).

A key written ``<role>:<key>`` (a word of letters, then ``:``) is *scoped*: the HMAC key is the
part after the colon, and a signature under it counts only where the caller's
``scope_allows(role)`` says so (policy events: the role the event claims is that role or
below, controlplane.cluster.nats_bus); a match under scoped keys alone is refused
``role_above_key``. Unscoped keys (the replicas') count everywhere. Role names are checked
by the settings (this module knows none; a misspelt scope, ``Experimenter:``, is refused
there, never taken for an unscoped key). A scope may also name teams, ``<role>@<team>:<key>``
(docs/security.md#teams): such a key signs only events acting for one of them.

Secrets never leave this module: ``SigningKeys`` prints as ``<2 keys>``, errors say which key
entry is wrong, never its text, and comparisons are constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "MIN_KEY_BYTES",
    "SIGNATURE_HEADER",
    "EventSigner",
    "Refusal",
    "SigningKeys",
    "add_sign_command",
    "signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "Cp-Signature"
SCHEME: Final = "v1"
MIN_KEY_BYTES: Final = 16
ENV_KEY: Final = "CONTROLPLANE_POLICY_SIGNING_KEY"
ENV_KEY_FILE: Final = "CONTROLPLANE_POLICY_SIGNING_KEY_FILE"
MAX_HEADER_CHARS: Final = 4096  # a few signatures; anything longer is refused unread

Refusal = Literal["unsigned", "bad_signature", "role_above_key"]
# ``<role>:<key>`` or ``<role>@<team>[+<team>...]:<key>``: a scoped key (module docstring)
_SCOPE: Final = re.compile(r"[A-Za-z]{1,16}(@[^:]{0,256})?")  # the settings check names


class SigningKeys:
    """One or more HMAC keys (the first signs). Prints and compares without showing them."""

    __slots__ = ("_keys", "_scopes")

    def __init__(self, keys: Iterable[bytes], scopes: Iterable[str | None] = ()) -> None:
        self._keys = tuple(keys)
        if not self._keys:
            raise ValueError("no policy signing key given")
        self._scopes = tuple(scopes) or (None,) * len(self._keys)
        if len(self._scopes) != len(self._keys):
            raise ValueError("one scope (or None) per policy signing key")

    @classmethod
    def parse(cls, text: str, *, source: str = "policy signing key") -> SigningKeys:
        """Comma- or newline-separated keys; ValueError names the entry, never its text."""
        keys, scopes = [], []
        for i, item in enumerate(part.strip() for part in text.replace("\n", ",").split(",")):
            if not item:
                continue
            scope: str | None
            scope, sep, rest = item.partition(":")
            if sep and _SCOPE.fullmatch(scope):
                raw = rest.strip().encode()
            else:
                scope, raw = None, item.encode()
            if len(raw) < MIN_KEY_BYTES:
                raise ValueError(
                    f"{source}: key {i + 1} is shorter than {MIN_KEY_BYTES} bytes "
                    "(generate one with: openssl rand -hex 32)"
                )
            keys.append(raw)
            scopes.append(scope)
        if not keys:
            raise ValueError(f"{source}: no key found")
        return cls(keys, scopes)

    @classmethod
    def read(cls, path: Path) -> SigningKeys:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"policy signing key file {path}: {reason}") from None
        return cls.parse(text, source=f"policy signing key file {path}")

    @property
    def keys(self) -> tuple[bytes, ...]:
        return self._keys

    @property
    def scopes(self) -> tuple[str | None, ...]:
        """Each key's scope (``<role>:<key>``), None for an unscoped key."""
        return self._scopes

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<{len(self._keys)} policy signing key{'s' if len(self._keys) != 1 else ''}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKeys) or len(other._keys) != len(self._keys):
            return False
        if other._scopes != self._scopes:
            return False
        return all(hmac.compare_digest(a, b) for a, b in zip(self._keys, other._keys, strict=True))

    def __hash__(self) -> int:
        return hash(len(self._keys))


def signature(key: bytes, msg_id: str, body: bytes) -> str:
    """The header value for one key: ``v1=<hex>``."""
    mac = hmac.new(key, msg_id.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={mac}"


class EventSigner:
    """Signs and checks policy events with inline keys or a key file (module docstring).
    Disabled (signs nothing, accepts everything) when neither is given."""

    def __init__(self, keys: SigningKeys | None = None, path: Path | None = None) -> None:
        if keys is not None and path is not None:
            raise ValueError("give the policy signing key inline or as a file, not both")
        self._keys = keys
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            self._reload()  # a missing or bad file at start is an error (ValueError)

    @property
    def enabled(self) -> bool:
        return self._keys is not None or self._path is not None

    def current(self) -> tuple[bytes, ...]:
        """The keys in force; a key file is re-read when its inode, size or mtime changed.
        An unreadable or bad new file keeps the previous keys (logged, without contents)."""
        if self._path is not None:
            try:
                st = self._path.stat()
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = None
            if stamp != self._stamp:
                try:
                    self._reload()
                except ValueError as exc:
                    self._stamp = stamp  # say it once per change of the file
                    log.warning("%s; keeping the previous policy signing keys", exc)
        return self._keys.keys if self._keys is not None else ()

    def _reload(self) -> None:
        assert self._path is not None
        st = self._path.stat() if self._path.exists() else None
        keys = SigningKeys.read(self._path)
        self._keys = keys
        self._stamp = None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)
        log.info("policy signing: %d key(s) loaded from %s", len(keys), self._path)

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        """The header to add to a published event ({} when signing is off)."""
        keys = self.current()
        return {SIGNATURE_HEADER: signature(keys[0], msg_id, body)} if keys else {}

    def check(
        self,
        headers: Mapping[str, str] | None,
        body: bytes,
        *,
        msg_id: str | None = None,
        scope_allows: Callable[[str], bool] | None = None,
    ) -> Refusal | None:
        """None when the event may be applied; else why it is refused. ``msg_id``: what the
        signature covers instead of the ``Nats-Msg-Id`` header (an owner request: its
        subject, so a request signed for one replica cannot be sent to another).
        ``scope_allows``: whether a scoped key's signature counts here (None: never)."""
        if not self.enabled:
            return None
        headers = headers or {}
        given = headers.get(SIGNATURE_HEADER)
        if not given or not given.strip():
            return "unsigned"
        if len(given) > MAX_HEADER_CHARS:
            return "bad_signature"
        if msg_id is None:
            msg_id = headers.get("Nats-Msg-Id", "")
        offered = [part.strip() for part in given.split(",") if part.strip()]
        keys = self.current()
        scopes = self._keys.scopes if self._keys is not None else ()
        ok = scoped = False
        for key, scope in zip(keys, scopes, strict=True):
            expected = signature(key, msg_id, body).encode()
            hit = False
            for value in offered:  # no early exit: the time does not depend on which matched
                hit |= hmac.compare_digest(expected, value.encode())
            if hit and (scope is None or (scope_allows is not None and scope_allows(scope))):
                ok = True
            elif hit:
                scoped = True
        if ok:
            return None
        return "role_above_key" if scoped else "bad_signature"


# -- controlplane policy sign -------------------------------------------------------------
def add_sign_command(policy: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``controlplane policy sign`` (for raw NATS publishers; docs/distributed.md)."""
    p = policy.add_parser(
        "sign",
        help="print the Cp-Signature header value for an event published straight to NATS",
        description="Signs the exact bytes of FILE (or stdin) together with the Nats-Msg-Id "
        f"it will be published with. The key comes from {ENV_KEY} or --key-file "
        f"({ENV_KEY_FILE}); the first key signs.",
    )
    p.add_argument("--msg-id", required=True, help="the Nats-Msg-Id header, e.g. vip:2")
    p.add_argument("-f", "--file", default="-", help="the event body, or - for stdin (default)")
    p.add_argument("--key-file", type=Path, help=f"key file (env {ENV_KEY_FILE})")
    p.set_defaults(func=_sign_command)


def _sign_command(args: argparse.Namespace) -> int:
    path = args.key_file or (
        Path(os.environ[ENV_KEY_FILE]) if os.environ.get(ENV_KEY_FILE) else None
    )
    inline = os.environ.get(ENV_KEY) or None
    if path is None and inline is None:
        raise ValueError(f"no signing key: set {ENV_KEY} or --key-file")
    if path is not None and inline is not None and args.key_file is None:
        raise ValueError(f"set either {ENV_KEY} or {ENV_KEY_FILE}, not both")
    keys = SigningKeys.read(path) if path is not None else SigningKeys.parse(inline or "")
    if args.file == "-":
        body = sys.stdin.buffer.read()
    else:
        try:
            body = Path(args.file).read_bytes()
        except OSError as exc:
            raise ValueError(f"{args.file}: {exc.strerror}") from None
    print(signature(keys.keys[0], args.msg_id, body))
    return 0
