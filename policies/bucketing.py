"""Sticky A/B bucketing and rollout percentages, bit-compatible with LaunchDarkly.

A session's *bucket* is a number in ``[0, 1)`` derived from a hash, exactly as LaunchDarkly's
server SDKs compute it::

    bucket = int(sha1(f"{key}.{salt}.{value}").hexdigest()[:15], 16) / 0xFFFFFFFFFFFFFFF

(with a *seed*, LaunchDarkly hashes ``f"{seed}.{value}"`` instead; supported for parity).
The same inputs give the same bucket on every replica, forever: assignment needs no storage.

Weights are integers in LaunchDarkly's unit, thousandths of a percent (``100_000`` = 100 %).
:func:`pick_variant` walks the cumulative weights in declared order and takes the first variant
with ``bucket < cumulative / 100_000``; if rounding leaves the bucket past the last boundary, the
last variant is taken (LaunchDarkly does the same).

Salts used by policies (see ``docs/policies.md``):

- rollout gate: ``key = policy id``, ``salt = rollout.salt`` or ``"rollout"``;
- experiment variant: ``key = experiment.key``, ``salt = experiment.salt`` or the experiment key.

Because the two use different keys/salts, a session's rollout bucket and its variant bucket are
independent. The hashed *value* is the session id, or the label named by ``bucket_by``; a session
that lacks that label is not targeted by the policy (``policies.resolve``).

Stability laws (tested in ``tests/unit/policies/test_bucketing.py``):

- raising a rollout percent never removes a session that was in;
- a variant keeps every session it had when its lower boundary does not rise and its upper
  boundary does not fall; in particular growing the **first** or the **last** variant (taking
  the share from any others) never moves a session out of it, and variants declared before the
  first one whose weight changed never lose or gain a session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

__all__ = [
    "LONG_SCALE",
    "WEIGHT_SCALE",
    "bucket",
    "in_rollout",
    "percent_to_units",
    "pick_variant",
    "units_in_rollout",
]

LONG_SCALE: Final = float(0xFFFFFFFFFFFFFFF)
"""Divisor of the 15-hex-digit hash prefix (LaunchDarkly's ``__LONG_SCALE__``)."""

WEIGHT_SCALE: Final = 100_000
"""Weight units per 100 % (one unit is 1/1000 of a percent, as in LaunchDarkly)."""

_SHA1 = hashlib.sha1


def bucket(key: str, salt: str, value: str, *, seed: int | None = None) -> float:
    """Return the LaunchDarkly bucket of ``value`` in ``[0, 1)``.

    ``seed`` replaces ``key`` and ``salt`` in the hash input, as LaunchDarkly's experiment seed
    does; policies never set it. Total: a lone surrogate (a label no boundary should have let
    in) hashes as its code point instead of failing every resolve that reads it.
    """
    text = f"{seed}.{value}" if seed is not None else f"{key}.{salt}.{value}"
    digest = _SHA1(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()
    return int(digest[:15], 16) / LONG_SCALE


def percent_to_units(percent: Decimal | float | int) -> int:
    """Convert a percentage with at most three decimals to weight units (``25.5`` → ``25500``)."""
    return int((Decimal(str(percent)) * 1000).to_integral_value())


def pick_variant(weights: Sequence[int], bucket: float) -> int:
    """Index of the variant whose cumulative range holds ``bucket`` (LaunchDarkly's walk).

    ``weights`` are in units of :data:`WEIGHT_SCALE` and are walked in declared order; the first
    index with ``bucket < cumulative / 100_000`` wins. If none does (weights summing to less
    than 100 %, or float rounding), the last index is returned. ``weights`` must not be empty.
    """
    if not weights:
        raise ValueError("pick_variant needs at least one weight")
    cumulative = 0
    for index, weight in enumerate(weights):
        cumulative += weight
        if bucket < cumulative / WEIGHT_SCALE:
            return index
    return len(weights) - 1


def units_in_rollout(bucket: float, units: int) -> bool:
    """Whether ``bucket`` falls inside a rollout of ``units`` thousandths of a percent.

    100 % admits every bucket, including the (2**-60 likely) bucket of exactly 1.0.
    """
    return units >= WEIGHT_SCALE or bucket < units / WEIGHT_SCALE


def in_rollout(key: str, salt: str, value: str, percent: Decimal | float | int) -> bool:
    """Whether ``value`` is inside a ``percent`` rollout: ``bucket < percent / 100``.

    The comparison is done in LaunchDarkly's weight units so that ``percent`` may carry up to
    three decimals exactly. ``percent`` 0 admits nobody, 100 admits everybody.
    """
    return units_in_rollout(bucket(key, salt, value), percent_to_units(percent))
