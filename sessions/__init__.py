"""Sessions: session model, wire dialects (sans-I/O), registry backends, version log."""

from sessions.native import guard as _guard

_guard()  # a stale compiled build is refused before any compiled module runs (sessions.native)
