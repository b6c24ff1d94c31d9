"""The version log as the push engine writes it: one entry per push step of a session.

``Recorder.record`` appends one entry (buffered, never awaits I/O; the fan-out makes it
durable before the frame goes: ``write_ahead``); ``Recorder.unchanged`` is the entry of a
policy change that changed nothing the upstream runs. Every entry but a client's own update
is also handed to the ``on_record`` hook (experiment exposures).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controlplane.push.frames import NO_DELTA
from controlplane.push.live import LiveSession
from controlplane.push.observer import PushObserver, Tally
from controlplane.push.protocol import Push
from policies.fields import Config, Delta
from policies.provenance import PolicyRef
from sessions.versionlog.core import Canonical, VersionLog, canonical, session_text

__all__ = ["ExposureHook", "Recorder"]

log = logging.getLogger(__name__)

# every entry but a client's own update, with the policy versions it names and whether the
# session now runs them (exposure)
ExposureHook = Callable[[LiveSession, tuple[PolicyRef, ...], bool], None]

_EXPOSING = frozenset({"acked", "unchanged"})  # the session runs the entry's configuration


class Recorder:
    """Appends the engine's version-log entries (DESIGN.md §4 Version log)."""

    __slots__ = ("_last_config", "_log", "_observer", "_tally", "on_record")

    def __init__(self, versionlog: VersionLog, observer: PushObserver, tally: Tally) -> None:
        self._log = versionlog
        self._observer = observer
        self._tally = tally
        self.on_record: ExposureHook | None = None
        self._last_config: tuple[Config, Canonical] | None = None  # the last config encoded

    def record(
        self,
        ls: LiveSession,
        *,
        cause: str,
        status: str,
        delta: Delta | Canonical,
        wire: dict[str, Any] | Canonical | None,
        error: str | None = None,
        version: int | None = None,
        refs: tuple[PolicyRef, ...] | None = None,
        config: Config | None = None,
        exposes: bool | None = None,
    ) -> None:
        """Append one version-log entry for this session (buffered; never awaits I/O).

        ``exposes``: whether the session runs the configuration of ``refs`` once this entry
        takes effect (experiment exposures, ``on_record``); None: decided by the status."""
        # config_hash: what the upstream runs once this entry takes effect (default: the push
        # state's base, e.g. after a client's own update; `audit at` checks it)
        try:
            self._log.add_entry(
                ls.session.id,
                ls.push.desired_version if version is None else version,
                cause,
                ls.session.applied if refs is None else refs,
                delta,
                wire,
                status,
                error,
                self._encoded(ls, ls.push.base if config is None else config),
            )
        except Exception:
            self._observer.log_append_failed()
            log.exception("version-log append failed for session %s", ls.session.id)
            raise
        self._tally.appended += 1
        hook = self.on_record
        if hook is not None and cause != "client":
            if exposes is None:
                acknowledging = ls.transport.acknowledging
                exposes = (
                    status in _EXPOSING
                    or (status == "sent" and not acknowledging)  # Streaming v3: no answer
                    or (status == "unverified" and acknowledging and error is None)
                )  # (the last: an app's `applied` for a Streaming v3 session)
            try:
                hook(ls, ls.session.applied if refs is None else refs, exposes)
            except Exception:
                log.exception("experiment exposure hook failed for session %s", ls.session.id)

    def _encoded(self, ls: LiveSession, cfg: Config) -> Canonical:
        """``cfg`` encoded for an entry, once per distinct config object: the session's last
        logged one (the `sent` entry's config, now `acked`), else the recorder's last (a
        fan-out's sessions share configs: Resolver), one pair for them all."""
        memo = ls.logged_config
        if memo is not None and memo[0] is cfg:
            return memo[1]
        last = self._last_config
        if last is None or last[0] is not cfg:
            last = self._last_config = (cfg, canonical(cfg))
        ls.logged_config = last  # (no object per session)
        return last[1]

    def sent(self, ls: LiveSession, push: Push, delta: Canonical, wire: Canonical | None,
             note: str | None) -> None:  # fmt: skip
        """The ``sent`` entry of ``push`` (its frame's encodings: ``delta``, ``wire``, the
        skipped-fields ``note``): ``record`` for a fan-out's one entry per session, positional
        and without the choices a ``sent`` entry never needs."""
        try:
            conf = self._encoded(ls, push.config)
            text = ls.id_text
            if text is None:
                text = ls.id_text = session_text(ls.session.id)
            self._log.add_entry(ls.session.id, push.version, push.cause, push.refs, delta, wire,
                                "sent", note, conf, text)  # fmt: skip
        except Exception:
            self._observer.log_append_failed()
            log.exception("version-log append failed for session %s", ls.session.id)
            raise
        self._tally.appended += 1
        hook = self.on_record
        if hook is not None and push.cause != "client":
            try:  # a sent push is running once sent only where no answer exists (Streaming v3)
                hook(ls, push.refs, not ls.transport.acknowledging)
            except Exception:
                log.exception("experiment exposure hook failed for session %s", ls.session.id)

    def unchanged(
        self,
        ls: LiveSession,
        cause: str,
        refs: tuple[PolicyRef, ...],
        push: Push | None = None,
    ) -> None:
        """An ``unchanged`` entry: the policy versions now in effect (``refs``) changed, the
        configuration the upstream runs did not (nothing to send: an experiment's control arm,
        a value the session already had, or every changed value quarantined). It names the
        session's current config version and the upstream's config (``base``)."""
        note = None
        if push is not None and push.held:
            note = "held back (refused earlier by the upstream): " + ", ".join(push.held)
        self.record(ls, cause=cause, status="unchanged", delta=NO_DELTA, wire=None, error=note,
                    version=None if push is None else push.version, refs=refs)  # fmt: skip
