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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Final, Literal

from annotated_types import Len
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from policies.bucketing import percent_to_units
from policies.documents import load_document, text_violations
from policies.errors import PolicyValidationError, Violation
from policies.fields import FIELD_NAMES, FIELDS, Config, Value, validate_config
from policies.provenance import PolicyRef, document_digest
from policies.selectors import Target, matches
from policies.violations import rule_error, translate, violations_error

__all__ = [
    "BUCKET_BY_SESSION",
    "DEFAULT_WAVE_INTERVAL_S",
    "ID_MAX_CHARS",
    "ID_PATTERN",
    "KINDS",
    "LABEL_PATTERN",
    "MAX_ITERATION",
    "MAX_LABEL_CONDITIONS",
    "MAX_PRIORITY",
    "MAX_VARIANTS",
    "MAX_VERSION",
    "MAX_WAVES",
    "MAX_WAVE_INTERVAL_S",
    "MIN_PRIORITY",
    "MIN_WAVE_INTERVAL_S",
    "REASON_MAX_CHARS",
    "RESERVED_IDS",
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

ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]*$"
ID_MAX_CHARS: Final = 63
VARIANT_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]*$"
LABEL_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$"
LABEL_MAX_CHARS: Final = 128
LABEL_VALUE_MAX_CHARS: Final = 256
SALT_MAX_CHARS: Final = 128
DESCRIPTION_MAX_CHARS: Final = 2000
REASON_MAX_CHARS: Final = 2000
MAX_VERSION: Final = 2**53 - 1  # exact in every JSON reader (IEEE double integers)
MAX_SELECTOR_VALUES: Final = 100
MAX_VARIANTS: Final = 20
MAX_ITERATION: Final = 1_000_000
MIN_PRIORITY: Final = -1_000_000
MAX_PRIORITY: Final = 1_000_000
MAX_APPLY_DEADLINE_S: Final = 300.0
MAX_GUARD_MIN_SESSIONS: Final = 1_000_000
MAX_GUARD_WINDOW_S: Final = 86_400.0
MAX_WAVES: Final = 20  # rollout.waves entries
MIN_WAVE_INTERVAL_S: Final = 0.1
MAX_WAVE_INTERVAL_S: Final = 7 * 86_400.0
DEFAULT_WAVE_INTERVAL_S: Final = 60.0
BUCKET_BY_SESSION: Final = "session_id"
# words of the REST API under /v1/policies/ (POST /v1/policies/preview): a policy with such an
# id could not be addressed as /v1/policies/{id}
RESERVED_IDS: Final = frozenset({"preview"})
MAX_LABEL_CONDITIONS: Final = 32  # labels in match.labels, and in match.labels_not
KINDS: Final = ("streaming-v3", "voice-agent-v1")

_PATTERN_HINTS: Final = {
    ID_PATTERN: "lowercase letters, digits and '-', starting with a letter or digit",
    VARIANT_PATTERN: "lowercase letters, digits, '-' and '_', starting with a letter or digit",
    LABEL_PATTERN: "letters, digits and _ . : / -, starting with a letter, digit or _",
}

Kind = Literal["streaming-v3", "voice-agent-v1"]
ApplyMode = Literal["immediate", "next_turn"]
OnBreach = Literal["halt", "rollback"]

Identifier = Annotated[
    str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_CHARS)
]
VariantName = Annotated[
    str, StringConstraints(pattern=VARIANT_PATTERN, min_length=1, max_length=ID_MAX_CHARS)
]
LabelName = Annotated[
    str, StringConstraints(pattern=LABEL_PATTERN, min_length=1, max_length=LABEL_MAX_CHARS)
]
LabelValue = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_VALUE_MAX_CHARS)]
LabelValues = Annotated[tuple[LabelValue, ...], Len(1, MAX_SELECTOR_VALUES)]
LabelConditions = Annotated[dict[LabelName, LabelValues], Len(0, MAX_LABEL_CONDITIONS)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX_CHARS)]
Salt = Annotated[str, StringConstraints(min_length=1, max_length=SALT_MAX_CHARS)]


def _whole(value: Any) -> Any:
    """JSON Schema's ``integer`` (what /openapi.json says): 7.0 is the integer 7."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_VERSION:
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole)]


def _not_reserved(value: str) -> str:
    if value in RESERVED_IDS:
        raise rule_error(
            "reserved", f"{value!r} is a reserved word of the REST API (/v1/policies/{value})"
        )
    return value


PolicyId = Annotated[Identifier, AfterValidator(_not_reserved)]
Percent = Annotated[Decimal, Field(ge=0, le=100, decimal_places=3)]


def _validate_set(raw: Any) -> Config:
    """``set`` / ``variants[i].set``: canonical fields, normalised; min ≤ max silence."""
    if not isinstance(raw, Mapping):
        raise rule_error("type", f"must be a mapping of canonical fields, got {_tname(raw)}")
    try:
        config = validate_config(raw, path="")
    except PolicyValidationError as exc:
        raise violations_error(exc.violations) from None
    problem = _silence_order(config)
    if problem is not None:
        raise violations_error([problem])
    return config


def _silence_order(config: Mapping[str, Value], where: str = "") -> Violation | None:
    low, high = config.get("min_turn_silence_ms"), config.get("max_turn_silence_ms")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        return Violation(
            f"{where}.min_turn_silence_ms",
            "min_le_max",
            f"is {low}, must not exceed max_turn_silence_ms ({high})",
            high,
        )
    return None


def _check_field_name(name: str) -> str:
    if name not in FIELD_NAMES:
        known = ", ".join(FIELDS)
        raise rule_error("unknown_field", f"unknown field {name!r} (known: {known})")
    return name


def _check_bucket_by(name: str) -> str:
    if name != BUCKET_BY_SESSION and len(name) > LABEL_MAX_CHARS:
        raise rule_error("max_length", f"label name is over {LABEL_MAX_CHARS} characters")
    return name


ConfigSet = Annotated[Config, PlainValidator(_validate_set)]
LockField = Annotated[str, AfterValidator(_check_field_name)]
BucketBy = Annotated[
    str, StringConstraints(pattern=LABEL_PATTERN, min_length=1), AfterValidator(_check_bucket_by)
]


def _as_list(value: Any) -> Any:
    """A scalar selector value means a one-item list."""
    return value if isinstance(value, list | tuple) else [value]


def _dedupe(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


class Match(BaseModel):
    """Which sessions a policy targets; every given condition must hold (empty matches all).

    ``kind``, ``model`` and each ``labels`` entry are "any of" lists; ``labels_absent`` names
    labels the session must not carry; ``labels_not`` maps a label to values it must not have
    (a session without that label satisfies it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Annotated[tuple[Kind, ...], Len(1, len(KINDS))] = ()
    model: Annotated[tuple[ModelName, ...], Len(1, MAX_SELECTOR_VALUES)] = ()
    labels: LabelConditions = Field(default_factory=dict)
    labels_absent: Annotated[tuple[LabelName, ...], Len(1, MAX_SELECTOR_VALUES)] = ()
    labels_not: LabelConditions = Field(default_factory=dict)

    @field_validator("kind", "model", "labels_absent", mode="before")
    @classmethod
    def _scalar_to_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("labels", "labels_not", mode="before")
    @classmethod
    def _label_scalars(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {name: _as_list(v) for name, v in value.items()}
        return value

    @field_validator("kind", "model", "labels_absent")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _dedupe(value)

    @field_validator("labels", "labels_not")
    @classmethod
    def _unique_values(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {name: _dedupe(values) for name, values in value.items()}

    @model_validator(mode="after")
    def _satisfiable(self) -> Match:
        both = sorted(set(self.labels) & set(self.labels_absent))
        if both:
            raise rule_error(
                "conflict",
                f"label(s) {', '.join(both)} both required (labels) and forbidden "
                "(labels_absent): the match could never hold",
            )
        return self

    def matches(self, target: Target) -> bool:
        """Whether ``target`` satisfies every condition (see :func:`policies.selectors.matches`)."""
        return matches(self, target)

    def document(self) -> dict[str, Any]:
        """Canonical JSON-able form; empty conditions are omitted."""
        out: dict[str, Any] = {}
        if self.kind:
            out["kind"] = list(self.kind)
        if self.model:
            out["model"] = list(self.model)
        if self.labels:
            out["labels"] = {k: list(v) for k, v in sorted(self.labels.items())}
        if self.labels_absent:
            out["labels_absent"] = list(self.labels_absent)
        if self.labels_not:
            out["labels_not"] = {k: list(v) for k, v in sorted(self.labels_not.items())}
        return out


class Rollout(BaseModel):
    """Sticky percentage gate: ``bucket(policy id, salt, value) < percent / 100``; or
    progressive waves (docs/policies.md#waves): ``waves``, ascending percents ending at 100,
    reached one after another every ``wave_interval_s`` while the version's guard holds (the
    same bucket: a session in one wave is in every later one). Exactly one of ``percent`` and
    ``waves``; a session outside the current wave resolves the policy's previous version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    percent: Percent | None = None
    waves: Annotated[tuple[Percent, ...], Len(1, MAX_WAVES)] | None = None
    wave_interval_s: float | None = Field(
        default=None, ge=MIN_WAVE_INTERVAL_S, le=MAX_WAVE_INTERVAL_S, strict=True
    )
    salt: Salt | None = None
    bucket_by: BucketBy = BUCKET_BY_SESSION

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        """``percent`` / ``waves`` / ``wave_interval_s`` are left out, never null; with
        ``waves``, ``wave_interval_s`` defaults to ``DEFAULT_WAVE_INTERVAL_S``."""
        if isinstance(data, Mapping):
            for name in ("percent", "waves", "wave_interval_s"):
                if name in data and data[name] is None:
                    raise rule_error("type", f"{name} must not be null (leave it out)")
            if "waves" in data and "wave_interval_s" not in data:
                data = {**data, "wave_interval_s": DEFAULT_WAVE_INTERVAL_S}
        return data

    @field_validator("waves")
    @classmethod
    def _ascending_to_100(cls, waves: tuple[Decimal, ...] | None) -> tuple[Decimal, ...] | None:
        if waves is None:
            return None
        for index in range(1, len(waves)):
            if waves[index] <= waves[index - 1]:
                raise rule_error(
                    "ascending",
                    f"waves must be strictly ascending: waves[{index}] is "
                    f"{_number(waves[index])}, not above {_number(waves[index - 1])}",
                )
        if waves[-1] != 100:
            raise rule_error(
                "last_wave", f"the last wave must be 100 (every session), got "
                f"{_number(waves[-1])}", 100
            )  # fmt: skip
        if waves[0] <= 0:
            raise rule_error("first_wave", "the first wave must be above 0", 0)
        return waves

    @model_validator(mode="after")
    def _percent_or_waves(self) -> Rollout:
        if (self.percent is None) == (self.waves is None):
            raise rule_error(
                "percent_or_waves", "give exactly one of rollout.percent and rollout.waves"
            )
        if self.wave_interval_s is not None and self.waves is None:
            raise rule_error("waves_required", "wave_interval_s needs rollout.waves")
        return self

    @property
    def effective_salt(self) -> str:
        return self.salt if self.salt is not None else "rollout"

    @property
    def interval_s(self) -> float:
        """Seconds between two automatic wave advances."""
        return DEFAULT_WAVE_INTERVAL_S if self.wave_interval_s is None else self.wave_interval_s

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.percent is not None:
            out["percent"] = _number(self.percent)
        if self.waves is not None:
            out["waves"] = [_number(w) for w in self.waves]
            out["wave_interval_s"] = self.interval_s
        out["bucket_by"] = self.bucket_by
        if self.salt is not None:
            out["salt"] = self.salt
        return out


class Variant(BaseModel):
    """One arm of an experiment: its share of sessions and the fields it sets."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: VariantName
    weight: Percent
    set: ConfigSet = Field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "weight": _number(self.weight), "set": _config_doc(self.set)}


class Experiment(BaseModel):
    """A/B split of the policy's sessions, LaunchDarkly-compatible (``policies.bucketing``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: Identifier
    bucket_by: BucketBy = BUCKET_BY_SESSION
    salt: Salt | None = None
    # raised deliberately to reshuffle (part of the bucketing salt); 1 keeps LaunchDarkly's hash
    iteration: int = Field(default=1, ge=1, le=MAX_ITERATION, strict=True)
    variants: Annotated[tuple[Variant, ...], Len(1, MAX_VARIANTS)]

    @field_validator("variants")
    @classmethod
    def _weights_and_names(cls, variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
        seen: dict[str, int] = {}
        for index, variant in enumerate(variants):
            if variant.name in seen:
                raise rule_error(
                    "unique",
                    f"variant name {variant.name!r} is used twice "
                    f"(variants[{seen[variant.name]}] and variants[{index}])",
                )
            seen[variant.name] = index
        total = sum((v.weight for v in variants), Decimal(0))
        if total != 100:
            raise rule_error(
                "weights_sum", f"variant weights sum to {_number(total)}, must be exactly 100", 100
            )
        return variants

    @property
    def effective_salt(self) -> str:
        """The salt hashed with the bucketed value: ``salt`` (default the key) at iteration 1,
        LaunchDarkly's hash unchanged; ``"{salt}.iteration-{n}"`` from iteration 2 on."""
        salt = self.salt if self.salt is not None else self.key
        return salt if self.iteration == 1 else f"{salt}.iteration-{self.iteration}"

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "bucket_by": self.bucket_by}
        if self.salt is not None:
            out["salt"] = self.salt
        if self.iteration != 1:  # (documents, and so digests, of iteration 1 are unchanged)
            out["iteration"] = self.iteration
        out["variants"] = [v.document() for v in self.variants]
        return out


class Guard(BaseModel):
    """Guarded rollout: halt (or roll back) a version whose pushes fail too often.

    A field left out (or ``null``) takes the deployment's default (``CONTROLPLANE_GUARD_*``,
    applied by the service, not here: this package knows no settings), ``enabled`` included:
    ``enabled: false`` opts the policy out, ``enabled: true`` in even where the deployment's
    default is off. The decision itself lives in ``controlplane.rollouts.guard``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool | None = Field(default=None, strict=True)
    max_failure_ratio: float | None = Field(default=None, ge=0, lt=1, strict=True)
    min_sessions: WholeNumber | None = Field(
        default=None, ge=1, le=MAX_GUARD_MIN_SESSIONS, strict=True
    )
    window_s: float | None = Field(default=None, gt=0, le=MAX_GUARD_WINDOW_S, strict=True)
    on_breach: OnBreach | None = None

    def document(self) -> dict[str, Any]:
        """The fields given; an omitted one means the deployment's default."""
        out: dict[str, Any] = {}
        for name in ("enabled", "max_failure_ratio", "min_sessions", "window_s", "on_breach"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    """What the resolver needs from a policy, precomputed once (no pydantic in the hot loop).

    ``refs[i]`` / ``configs[i]`` belong to variant ``i`` (``configs`` already merge the
    policy's ``set`` under the variant's); without an experiment both hold one entry.
    ``defaults``: the policy's ``defaults`` (the same for every variant).
    ``version`` is ``None`` for an unpublished document, which the resolver refuses.
    ``rank``: the authority of the role that owns the policy (:meth:`Policy.with_rank`); a
    lock holds against every policy of a lower rank (docs/policies.md#locks).
    """

    id: str
    version: int | None
    precedence: tuple[int, str]
    rank: int
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

    @field_validator("lock")
    @classmethod
    def _canonical_lock(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        chosen = frozenset(value)
        return tuple(name for name in FIELDS if name in chosen)

    @model_validator(mode="after")
    def _variant_silence_order(self) -> Policy:
        problems = []
        if self.defaults:  # a session without its own silences gets both: they must agree
            problem = _silence_order({**self.defaults, **self.set}, "defaults")
            if problem is not None:
                problems.append(problem)
        for index, variant in enumerate(self.experiment.variants if self.experiment else ()):
            merged = {**self.set, **variant.set}
            problem = _silence_order(merged, f"experiment.variants[{index}].set")
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

    def with_rank(self, rank: int) -> Policy:
        """This policy owned by a role of authority ``rank``; the document is unchanged."""
        if rank == self._rank:
            return self
        copy = self.model_copy()
        copy._rank = rank
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
        out["set"] = _config_doc(self.set)
        if self.defaults:  # omitted when empty: digests of documents without it are unchanged
            out["defaults"] = _config_doc(self.defaults)
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
            [Violation("<document>", "type", f"a policy must be a mapping, got {_tname(doc)}")]
        )
    raw_id = doc.get("id")
    policy_id = raw_id if isinstance(raw_id, str) and raw_id.isascii() else None
    unencodable = text_violations(doc)
    if unencodable:
        raise PolicyValidationError(unencodable, policy_id=policy_id)
    try:
        return Policy.model_validate(dict(doc))
    except ValidationError as exc:
        violations = translate(exc, Policy, _PATTERN_HINTS)
        raise PolicyValidationError(violations, policy_id=policy_id) from exc


def load_policy_text(text: str) -> Policy:
    """Parse a policy from YAML or JSON text (see :func:`policies.documents.load_document`)."""
    return parse_policy(load_document(text))


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _config_doc(config: Mapping[str, Value]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name in config:
            value = config[name]
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _tname(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__
