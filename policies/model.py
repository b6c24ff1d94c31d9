"""The policy document (DESIGN §4): models, parsing, canonical form.

A :class:`Policy` is immutable. It is built only through :func:`parse_policy` (a mapping) or
:func:`load_policy_text` (YAML or JSON text); both raise
:class:`policies.errors.PolicyValidationError` whose ``violations`` name every broken rule by
dotted path, rule code and limit (the translation lives in :mod:`policies.violations`).

Values are stored normalised: ``set`` configs via :func:`policies.fields.validate_config`
(lists as tuples), scalar-or-list selectors as tuples, ``lock`` in canonical field order,
percentages and weights as :class:`~decimal.Decimal` with at most three decimals.
:meth:`Policy.document` gives the canonical JSON-able form, which parses back to an equal policy.

Each policy also carries a :class:`PolicyPlan`, computed once at construction, that the
resolver's hot loop reads instead of the pydantic model.

Its parts: the sections (:mod:`policies.sections`: match, rollout, experiment, guard), the
constrained field types (:mod:`policies.constraints`) and the limits (:mod:`policies.limits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from policies.bucketing import percent_to_units
from policies.constraints import (
    PATTERN_HINTS,
    ApplyMode,
    ConfigSet,
    LockField,
    PolicyId,
    WholeNumber,
    config_document,
    silence_order,
    type_name,
)
from policies.documents import load_document, text_violations
from policies.errors import PolicyValidationError, Violation
from policies.fields import FIELDS, Value
from policies.limits import (
    BUCKET_BY_SESSION,
    DESCRIPTION_MAX_CHARS,
    MAX_APPLY_DEADLINE_S,
    MAX_PRIORITY,
    MAX_VERSION,
    MIN_PRIORITY,
    REASON_MAX_CHARS,
)
from policies.provenance import PolicyRef, document_digest
from policies.sections import Experiment, Guard, Match, Rollout, Variant
from policies.violations import translate, violations_error

__all__ = [
    "Experiment",
    "Guard",
    "Match",
    "Policy",
    "PolicyPlan",
    "Rollout",
    "Variant",
    "load_policy_text",
    "parse_policy",
]


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    """What the resolver needs from a policy, precomputed once (no pydantic in the hot loop).

    ``refs[i]`` / ``configs[i]`` belong to variant ``i`` (``configs`` already merge the
    policy's ``set`` under the variant's); without an experiment both hold one entry.
    ``defaults``: the policy's ``defaults`` (the same for every variant).
    ``version`` is ``None`` for an unpublished document, which the resolver refuses.
    ``rank``: the authority of the role that owns the policy (:meth:`Policy.with_rank`); a
    lock holds against every policy of a lower rank (docs/policies.md#locks), and, when
    ``team`` is set (its owner team, below admin), against that rank's policies of other teams
    too (docs/security.md#locks-and-teams).
    """

    id: str
    version: int | None
    precedence: tuple[int, str]
    rank: int
    team: str | None
    match: Match
    lock: tuple[str, ...]
    rollout_units: int | None
    rollout_bucket_by: str
    rollout_salt: str
    experiment_key: str | None
    experiment_bucket_by: str
    experiment_salt: str
    weights: tuple[int, ...]
    refs: tuple[PolicyRef, ...]
    configs: tuple[Mapping[str, Value], ...]
    defaults: Mapping[str, Value]


class Policy(BaseModel):
    """One version of a policy document (DESIGN §4 plus ``apply`` / ``apply_deadline_s`` /
    ``guard``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: PolicyId
    version: WholeNumber | None = Field(default=None, ge=1, le=MAX_VERSION, strict=True)
    priority: WholeNumber = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX_CHARS)
    match: Match = Field(default_factory=Match)
    set: ConfigSet = Field(default_factory=dict)
    # applied only where the session's client did not set the field (docs/policies.md#defaults)
    defaults: ConfigSet = Field(default_factory=dict)
    lock: tuple[LockField, ...] = ()
    rollout: Rollout | None = None
    experiment: Experiment | None = None
    apply: ApplyMode = "immediate"
    apply_deadline_s: float = Field(default=10.0, gt=0, le=MAX_APPLY_DEADLINE_S, strict=True)
    guard: Guard | None = None
    # why this version was published: per-version metadata, never part of the config
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    # the owning role's authority: not part of the document (a publisher cannot claim it);
    # set by the policy store from the policy event (docs/policies.md#locks)
    _rank: int = PrivateAttr(default=0)
    # the owner team a lock of this policy binds its rank's other teams for (None: not bound)
    _team: str | None = PrivateAttr(default=None)

    @field_validator("lock")
    @classmethod
    def _canonical_lock(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        chosen = frozenset(value)
        return tuple(name for name in FIELDS if name in chosen)

    @model_validator(mode="after")
    def _variant_silence_order(self) -> Policy:
        problems = []
        if self.defaults:  # a session without its own silences gets both: they must agree
            problem = silence_order({**self.defaults, **self.set}, "defaults")
            if problem is not None:
                problems.append(problem)
        for index, variant in enumerate(self.experiment.variants if self.experiment else ()):
            merged = {**self.set, **variant.set}
            problem = silence_order(merged, f"experiment.variants[{index}].set")
            if problem is not None:
                problems.append(problem)
        if problems:
            raise violations_error(problems)
        return self

    @cached_property
    def plan(self) -> PolicyPlan:
        """The resolver's precomputed view of this policy (computed once, then a dict lookup)."""
        return _make_plan(self)

    @cached_property
    def digest(self) -> str:
        """sha256 hex of :meth:`document` (canonical JSON): names this version's content."""
        return document_digest(self.document())

    def with_version(self, version: int) -> Policy:
        """This policy as version ``version`` (1 to ``MAX_VERSION``); everything else unchanged."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise PolicyValidationError(
                [Violation("version", "min", f"must be a whole number ≥ 1, got {version!r}", 1)],
                policy_id=self.id,
            )
        if version > MAX_VERSION:
            raise PolicyValidationError(
                [Violation("version", "max", f"would be {version}, over the highest version "
                           f"{MAX_VERSION} (2^53 - 1): this policy id has no versions left",
                           MAX_VERSION)],
                policy_id=self.id,
            )  # fmt: skip
        return self._copy(version=version)

    def with_reason(self, reason: str | None) -> Policy:
        """This policy with ``reason`` (``None``: none); everything else unchanged."""
        if reason is not None and len(reason) > REASON_MAX_CHARS:
            raise PolicyValidationError(
                [Violation("reason", "max_length", f"is {len(reason)} characters, over "
                           f"{REASON_MAX_CHARS}", REASON_MAX_CHARS)],
                policy_id=self.id,
            )  # fmt: skip
        return self._copy(reason=reason)

    def _copy(self, **update: Any) -> Policy:
        copy = self.model_copy(update=update)
        copy.__dict__.pop("plan", None)  # cached for the old document
        copy.__dict__.pop("digest", None)
        return copy

    def content(self) -> dict[str, Any]:
        """:meth:`document` without ``version`` and ``reason``: what two versions compare by
        to tell whether a publish changes anything."""
        out = self.document()
        out.pop("version", None)
        out.pop("reason", None)
        return out

    @property
    def rank(self) -> int:
        """The owning role's authority (0 unless set by :meth:`with_rank`)."""
        return self._rank

    @property
    def team(self) -> str | None:
        """The owner team its locks bind other teams of its rank for (None: no team binds)."""
        return self._team

    def with_rank(self, rank: int, team: str | None = None) -> Policy:
        """This policy owned by a role of authority ``rank`` and, for locks, team ``team``
        (None: its locks bind only lower ranks); the document is unchanged."""
        if rank == self._rank and team == self._team:
            return self
        copy = self.model_copy()
        copy._rank = rank
        copy._team = team
        copy.__dict__.pop("plan", None)
        return copy

    def document(self) -> dict[str, Any]:
        """Canonical JSON-able form: defaults spelled out, ``None`` omitted, lists for tuples."""
        out: dict[str, Any] = {"id": self.id}
        if self.version is not None:
            out["version"] = self.version
        if self.reason is not None:
            out["reason"] = self.reason
        out["priority"] = self.priority
        if self.description is not None:
            out["description"] = self.description
        out["match"] = self.match.document()
        out["set"] = config_document(self.set)
        if self.defaults:  # omitted when empty: digests of documents without it are unchanged
            out["defaults"] = config_document(self.defaults)
        out["lock"] = list(self.lock)
        if self.rollout is not None:
            out["rollout"] = self.rollout.document()
        if self.experiment is not None:
            out["experiment"] = self.experiment.document()
        out["apply"] = self.apply
        out["apply_deadline_s"] = self.apply_deadline_s
        if self.guard is not None:
            out["guard"] = self.guard.document()
        return out


def _make_plan(policy: Policy) -> PolicyPlan:
    version = policy.version if policy.version is not None else 0
    rollout, experiment = policy.rollout, policy.experiment
    if experiment is None:
        refs: tuple[PolicyRef, ...] = (PolicyRef(policy.id, version, None, policy.digest),)
        configs: tuple[Mapping[str, Value], ...] = (dict(policy.set),)
        weights: tuple[int, ...] = ()
    else:
        refs = tuple(
            PolicyRef(policy.id, version, v.name, policy.digest) for v in experiment.variants
        )
        configs = tuple({**policy.set, **v.set} for v in experiment.variants)
        weights = tuple(percent_to_units(v.weight) for v in experiment.variants)
    return PolicyPlan(
        id=policy.id,
        version=policy.version,
        precedence=(-policy.priority, policy.id),
        rank=policy.rank,
        team=policy.team,
        match=policy.match,
        lock=policy.lock,
        rollout_units=_units(rollout),
        rollout_bucket_by=BUCKET_BY_SESSION if rollout is None else rollout.bucket_by,
        rollout_salt="rollout" if rollout is None else rollout.effective_salt,
        experiment_key=None if experiment is None else experiment.key,
        experiment_bucket_by=BUCKET_BY_SESSION if experiment is None else experiment.bucket_by,
        experiment_salt="" if experiment is None else experiment.effective_salt,
        weights=weights,
        refs=refs,
        configs=configs,
        defaults=dict(policy.defaults),
    )


def _units(rollout: Rollout | None) -> int | None:
    """The percent gate in weight units (None: no gate; waves gate versions, not the policy)."""
    if rollout is None or rollout.percent is None:
        return None
    return percent_to_units(rollout.percent)


def parse_policy(doc: Mapping[str, Any]) -> Policy:
    """Validate a policy document; raises PolicyValidationError naming every violation."""
    if not isinstance(doc, Mapping):
        raise PolicyValidationError(
            [Violation("<document>", "type", f"a policy must be a mapping, got {type_name(doc)}")]
        )
    raw_id = doc.get("id")
    policy_id = raw_id if isinstance(raw_id, str) and raw_id.isascii() else None
    unencodable = text_violations(doc)
    if unencodable:
        raise PolicyValidationError(unencodable, policy_id=policy_id)
    try:
        return Policy.model_validate(dict(doc))
    except ValidationError as exc:
        violations = translate(exc, Policy, PATTERN_HINTS)
        raise PolicyValidationError(violations, policy_id=policy_id) from exc


def load_policy_text(text: str) -> Policy:
    """Parse a policy from YAML or JSON text (see :func:`policies.documents.load_document`)."""
    return parse_policy(load_document(text))
