"""Rollouts: per-version counts, guarded rollouts (guard, halts), progressive waves, preview,
sticky assignments and experiments (exposures, SRM)."""

__all__: list[str] = []
