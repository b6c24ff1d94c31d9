"""Distributed mode: what a replica needs of the others (ports, upkeep), owner routing, and the
NATS adapter (the only modules that import ``nats``); wiring used by the composition root."""

__all__: list[str] = []
