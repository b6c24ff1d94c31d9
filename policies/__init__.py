"""Pure policy domain: model, selectors, precedence and locks, bucketing, resolution, deltas.

Imports no I/O library (checked by import-linter).
"""
