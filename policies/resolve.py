"""Resolution: the effective config of one session under a set of policies.

``effective = client config`` overlaid by every policy that *applies* to the session:

1. its ``match`` holds (:func:`policies.selectors.matches`);
2. if it has a ``rollout``, the session's bucket is inside the percentage;
3. if it has an ``experiment``, the session is assigned a variant; the variant's ``set``
   overrides the policy's ``set``.

A policy whose rollout or experiment buckets by a label (``bucket_by``) does not apply to a
session lacking that label (or carrying it empty): such a session cannot be assigned stickily.

Precedence: applying policies are ordered by ``priority`` descending, ties broken by policy ``id``
ascending (byte order; ids are ASCII). The first policy in that order that sets a field owns it
(``provenance``), except that locks are a ceiling: a field locked by an applying policy of
owner rank ``r`` (``PolicyPlan.rank``, the authority of the role that owns it) cannot be set by
an applying policy of a lower rank, whatever its priority; nor, when the lock is bound to its
owner team (``PolicyPlan.team``: below admin), by a policy of rank ``r`` of another team
(docs/security.md#locks-and-teams). Between locks on one field the higher rank wins, then
priority, then id (``locks``; publishing refuses a second team's lock, so same-rank locks of
two teams are only met in policies stored before that); the field then goes to the first
policy, in priority order, among those the lock lets set it (docs/policies.md#locks).

``defaults`` fill only what is left: a field no applying policy sets (under the same
ceiling) takes the first default in precedence order, and only in a session whose client
config lacks the field. So ``set`` > the client's value > ``defaults`` > the upstream default
(docs/policies.md#defaults).

Only published policies (with a ``version``) resolve; an unversioned one raises ``ValueError``.
The hot path reads each policy's precomputed :class:`policies.model.PolicyPlan`; nothing here
calls pydantic.

A fan-out resolves thousands of sessions against one policy set: :class:`Resolver` computes
the policies' part (the :class:`Overlay`: values, provenance, locks, applied) once per distinct
``(kind, model, labels, decisions of the policies that bucket by session id)`` and merges it
over each session's client config. Its results equal :func:`resolve`'s (property-tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from policies.bucketing import bucket, pick_variant, units_in_rollout
from policies.fields import Config, Value
from policies.limits import BUCKET_BY_SESSION
from policies.model import Policy, PolicyPlan
from policies.provenance import PolicyRef
from policies.selectors import Target, matches

__all__ = [
    "Effective",
    "Inputs",
    "Overlay",
    "PolicyRef",
    "Resolver",
    "applies",
    "precedence_key",
    "resolve",
]


@dataclass(frozen=True, slots=True)
class Effective:
    """A session's resolved configuration and where each part of it came from.

    - ``config``: client config overlaid by the applying policies;
    - ``provenance``: field → the policy (version, variant) that set it; client-owned fields
      are absent;
    - ``locks``: locked field → the highest-precedence applying policy that locks it;
    - ``applied``: every applying policy, in precedence order.
    """

    config: Config
    provenance: Mapping[str, PolicyRef]
    locks: Mapping[str, PolicyRef]
    applied: tuple[PolicyRef, ...]


def precedence_key(policy: Policy) -> tuple[int, str]:
    """Sort key putting the winning policy first: ``(-priority, id)``."""
    return policy.plan.precedence


def applies(policy: Policy, target: Target) -> PolicyRef | None:
    """The policy's reference (with the session's variant) if it applies to ``target``."""
    hit = _applies(policy.plan, target)
    return None if hit is None else hit[0]


@dataclass(frozen=True, slots=True)
class Overlay:
    """What the applying policies contribute to a target, before the client config.

    ``defaults``: field → (value, policy) for the fields no applying policy sets but one gives
    a default for; each fills only a client config that lacks the field.
    Shared between sessions by :class:`Resolver`: treat every mapping as read-only.
    """

    values: Mapping[str, Value]
    provenance: Mapping[str, PolicyRef]
    locks: Mapping[str, PolicyRef]
    applied: tuple[PolicyRef, ...]
    defaults: Mapping[str, tuple[Value, PolicyRef]] = field(default_factory=dict)

    def over(self, client_config: Mapping[str, Value]) -> Effective:
        """The effective config of a session whose client asked for ``client_config``."""
        config = dict(client_config)
        provenance = self.provenance
        if self.defaults:
            filled = [name for name in self.defaults if name not in client_config]
            if filled:
                provenance = dict(provenance)
                for name in filled:
                    config[name], provenance[name] = self.defaults[name]
        config.update(self.values)
        return Effective(config, provenance, self.locks, self.applied)


def resolve(
    client_config: Mapping[str, Value], policies: Iterable[Policy], target: Target
) -> Effective:
    """Effective config of ``target`` whose client asked for ``client_config``.

    ``policies`` holds at most one version per policy id (``ValueError`` otherwise).
    """
    return overlay(_unique_plans(policies), target).over(client_config)


def _unique_plans(policies: Iterable[Policy]) -> list[PolicyPlan]:
    plans: list[PolicyPlan] = []
    seen: set[str] = set()
    for policy in policies:
        plan = policy.plan
        if plan.id in seen:
            raise ValueError(f"policy {plan.id!r} given twice; resolve takes one version per id")
        seen.add(plan.id)
        plans.append(plan)
    return plans


def overlay(plans: Iterable[PolicyPlan], target: Target) -> Overlay:
    """The applying policies' values, provenance, locks, defaults and references for
    ``target``."""
    hits: list[_Hit] = []
    locking = defaulting = False
    for plan in plans:
        hit = _applies(plan, target)
        if hit is not None:
            hits.append(
                (plan.precedence, plan.rank, plan.team, plan.lock, hit[0], hit[1], plan.defaults)
            )
            locking = locking or bool(plan.lock)
            defaulting = defaulting or bool(plan.defaults)
    hits.sort(key=_first)
    values: dict[str, Value] = {}
    provenance: dict[str, PolicyRef] = {}
    locks: dict[str, PolicyRef] = {}
    applied = tuple(hit[4] for hit in hits)
    if not locking and not defaulting:
        for _, _, _, _, ref, set_values, _ in hits:
            for name, value in set_values.items():
                if name not in provenance:
                    provenance[name] = ref
                    values[name] = value
        return Overlay(values, provenance, locks, applied)
    # locks first: per field the highest rank, then (hits being in precedence order) priority
    ceiling: dict[str, tuple[int, str | None]] = {}
    for _, rank, team, lock, ref, _, _ in hits:
        for name in lock:
            held = ceiling.get(name)
            if held is None or rank > held[0]:
                ceiling[name] = (rank, team)
                locks[name] = ref
    for _, rank, team, _, ref, set_values, _ in hits:
        for name, value in set_values.items():
            if name not in provenance and _may_set(rank, team, ceiling.get(name)):
                provenance[name] = ref
                values[name] = value
    # defaults: fields no policy sets; the first in precedence order under the lock ceiling
    defaults: dict[str, tuple[Value, PolicyRef]] = {}
    for _, rank, team, _, ref, _, given in hits:
        for name, value in given.items():
            if (name not in provenance and name not in defaults
                    and _may_set(rank, team, ceiling.get(name))):  # fmt: skip
                defaults[name] = (value, ref)
    return Overlay(values, provenance, locks, applied, defaults)


def _may_set(rank: int, team: str | None, held: tuple[int, str | None] | None) -> bool:
    """Whether a policy of ``rank`` owned by ``team`` may set a field whose lock is ``held``
    (rank, bound team; None: unlocked): a higher rank may; the lock's rank only when the lock
    binds no team or it is the lock's team."""
    if held is None or rank > held[0]:
        return True
    return rank == held[0] and (held[1] is None or team == held[1])


class Resolver:
    """Resolve many targets against one policy set, reusing overlays.

    A target's overlay depends on its kind, model and labels, and on its session id only
    through the policies that bucket by session id (their rollout or experiment decision).
    So the cache key is those three plus each such policy's decision for the target; the
    decisions are computed per target (one hash each), everything else once per key.

    Targets with the same key and equal client configs (no config, or only hashable values
    equal in order and type) get the very same :class:`Effective`: its ``config`` is shared
    and must be treated as a value (never changed in place); the push engine then encodes
    it once per fan-out. Other client configs get their own merge.
    """

    __slots__ = ("_by_session", "_cache", "_effective", "_last", "_plans")

    def __init__(self, policies: Iterable[Policy]) -> None:
        self._plans = _unique_plans(policies)
        for plan in self._plans:
            if plan.version is None:
                raise ValueError(
                    f"policy {plan.id!r} has no version; only published versions resolve"
                )
        self._by_session = [
            plan
            for plan in self._plans
            if (plan.rollout_units is not None and plan.rollout_bucket_by == BUCKET_BY_SESSION)
            or (plan.experiment_key is not None and plan.experiment_bucket_by == BUCKET_BY_SESSION)
        ]
        self._cache: dict[tuple[object, ...], Overlay] = {}
        self._effective: dict[tuple[object, ...], Effective] = {}
        self._last: tuple[tuple[object, ...], tuple[object, ...], Effective] | None = None

    def resolve(self, client_config: Mapping[str, Value], target: Target) -> Effective:
        return self.resolve_inputs(Inputs.of(target, client_config))

    def resolve_inputs(self, inputs: Inputs) -> Effective:
        """``resolve`` with the session's inputs keyed once (a session keeps its ``Inputs``
        while its labels and client config stay the same objects)."""
        target, client_config, key, client = inputs
        last = self._last  # consecutive sessions of a fan-out often share interned keys
        if last is not None and last[0] is key and last[1] is client:
            return last[2]
        shareable = client is not None and not self._by_session
        if self._by_session:
            key += tuple(_decision(plan, target) for plan in self._by_session)
        if client is not None:
            shared = self._effective.get((key, client))
            if shared is not None:
                if shareable:
                    self._last = (inputs.key, client, shared)
                return shared
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = overlay(self._plans, target)
        effective = found.over(client_config)
        if client is not None:
            self._effective[(key, client)] = effective
            if shareable:
                self._last = (inputs.key, client, effective)
        return effective


class Inputs(NamedTuple):
    """What a session's resolution depends on, with its keys computed once: the ``Target``,
    the client config, ``(kind, model, sorted labels)`` and :func:`client_key` of the config.
    Valid while the labels and the client config are not changed in place (the session
    record replaces them)."""

    target: Target
    client_config: Mapping[str, Value]
    key: tuple[object, ...]
    client: tuple[object, ...] | None

    @classmethod
    def of(cls, target: Target, client_config: Mapping[str, Value]) -> Inputs:
        labels = target.labels
        key = (target.kind, target.model, tuple(sorted(labels.items())) if labels else ())
        client = client_key(client_config)
        return cls(target, client_config, _interned(key), client and _interned(client))


# Equal keys as one object, so that a Resolver recognises a run of sessions with the same
# inputs by identity (no hashing). Bounded: cleared when full (a miss only costs a lookup).
_INTERNED: dict[tuple[object, ...], tuple[object, ...]] = {}
_INTERNED_MAX: Final = 4096


def _interned(key: tuple[object, ...]) -> tuple[object, ...]:
    found = _INTERNED.get(key)
    if found is None:
        if len(_INTERNED) >= _INTERNED_MAX:
            _INTERNED.clear()
        found = _INTERNED[key] = key
    return found


def client_key(config: Mapping[str, Value]) -> tuple[object, ...] | None:
    """A key equal only for client configs that merge to equal configs (types included:
    ``True == 1`` but they encode differently), or None when a value is not hashable."""
    if not config:
        return ()
    key = tuple((name, type(value), value) for name, value in config.items())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _decision(plan: PolicyPlan, target: Target) -> PolicyRef | None:
    hit = _applies(plan, target)
    return None if hit is None else hit[0]


_Hit = tuple[
    tuple[int, str],
    int,
    str | None,
    tuple[str, ...],
    PolicyRef,
    Mapping[str, Value],
    Mapping[str, Value],
]


def _first(hit: _Hit) -> tuple[int, str]:
    return hit[0]


def _applies(plan: PolicyPlan, target: Target) -> tuple[PolicyRef, Mapping[str, Value]] | None:
    if plan.version is None:
        raise ValueError(f"policy {plan.id!r} has no version; only published versions resolve")
    if not matches(plan.match, target):
        return None
    if plan.rollout_units is not None:
        value = _bucket_value(plan.rollout_bucket_by, target)
        if value is None:
            return None
        if not units_in_rollout(bucket(plan.id, plan.rollout_salt, value), plan.rollout_units):
            return None
    if plan.experiment_key is None:
        return plan.refs[0], plan.configs[0]
    value = _bucket_value(plan.experiment_bucket_by, target)
    if value is None:
        return None
    index = pick_variant(plan.weights, bucket(plan.experiment_key, plan.experiment_salt, value))
    return plan.refs[index], plan.configs[index]


def _bucket_value(bucket_by: str, target: Target) -> str | None:
    if bucket_by == BUCKET_BY_SESSION:
        return target.id
    return target.labels.get(bucket_by) or None
