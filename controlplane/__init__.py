"""The control plane service: gateway, control channel, push engine, REST API, metrics, CLI."""

from sessions.native import guard as _guard

__version__ = "0.1.0"

_guard()  # a stale compiled build is refused before any compiled module runs (sessions.native)
