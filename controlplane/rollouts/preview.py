"""Policy preview: which of this replica's live sessions a policy document would change, by
how much, and sample wire messages (``POST /v1/policies/preview``). Nothing is published."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from controlplane.push.live import LiveSession
from policies.delta import diff
from policies.fields import to_json
from policies.model import Policy
from policies.resolve import Effective
from sessions.model import Session

__all__ = ["SAMPLES", "preview"]

SAMPLES: Final = 5


def preview(
    policy: Policy,
    policies: list[Policy],
    live: Iterable[LiveSession],
    resolve: Callable[[Session, list[Policy]], Effective],
) -> dict[str, Any]:
    """``policies`` is the active set with ``policy`` (versioned) in place of its id."""
    by_kind: dict[str, dict[str, int]] = {}
    by_variant: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    targeted = changed = 0
    for ls in live:
        if not policy.match.matches(ls.target):
            continue
        effective = resolve(ls.session, policies)
        ref = next((r for r in effective.applied if r.id == policy.id), None)
        if ref is None:
            continue
        targeted += 1
        delta = diff(ls.session.effective_config, effective.config)
        counts = by_kind.setdefault(ls.session.kind, {"targeted": 0, "changed": 0})
        counts["targeted"] += 1
        if ref.variant is not None:
            by_variant[ref.variant] = by_variant.get(ref.variant, 0) + 1
        if delta:
            changed += 1
            counts["changed"] += 1
            if len(samples) < SAMPLES:
                encoded = ls.dialect.encode(delta, ls.session.model)
                samples.append({
                    "session_id": ls.session.id, "kind": ls.session.kind,
                    "delta": to_json(delta), "wire": encoded.message,
                    "skipped": dict(encoded.skipped),
                })  # fmt: skip
    return {"id": policy.id, "version": policy.version, "targeted": targeted,
            "changed": changed, "by_kind": by_kind, "by_variant": by_variant,
            "samples": samples}  # fmt: skip
