"""The sections of a policy document: which sessions it targets (:class:`Match`), its
sticky percentage or progressive waves (:class:`Rollout`), its A/B split
(:class:`Experiment` of :class:`Variant`) and its guarded rollout (:class:`Guard`)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

from annotated_types import Len
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policies.constraints import (
    BucketBy,
    ConfigSet,
    Identifier,
    Kind,
    LabelConditions,
    LabelName,
    ModelName,
    OnBreach,
    Percent,
    Salt,
    VariantName,
    WholeNumber,
    config_document,
    number,
)
from policies.limits import (
    BUCKET_BY_SESSION,
    DEFAULT_WAVE_INTERVAL_S,
    KINDS,
    MAX_GUARD_MIN_SESSIONS,
    MAX_GUARD_WINDOW_S,
    MAX_ITERATION,
    MAX_SELECTOR_VALUES,
    MAX_VARIANTS,
    MAX_WAVE_INTERVAL_S,
    MAX_WAVES,
    MIN_WAVE_INTERVAL_S,
)
from policies.selectors import Target, matches
from policies.violations import rule_error

__all__ = ["Experiment", "Guard", "Match", "Rollout", "Variant"]


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
                    f"{number(waves[index])}, not above {number(waves[index - 1])}",
                )
        if waves[-1] != 100:
            raise rule_error(
                "last_wave", f"the last wave must be 100 (every session), got "
                f"{number(waves[-1])}", 100
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
            out["percent"] = number(self.percent)
        if self.waves is not None:
            out["waves"] = [number(w) for w in self.waves]
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
        return {"name": self.name, "weight": number(self.weight), "set": config_document(self.set)}


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
                "weights_sum", f"variant weights sum to {number(total)}, must be exactly 100", 100
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
