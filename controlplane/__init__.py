"""The control plane service: gateway, control channel, push engine, REST API, metrics, CLI."""

__version__ = "0.1.0"
