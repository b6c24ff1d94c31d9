"""The durable audit: shipping the local version log to a remote stream, reading it back (sources
for ``audit verify`` / ``audit at``), the checkpoint signing key."""

__all__: list[str] = []
