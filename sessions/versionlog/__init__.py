"""The per-session version log: ``core`` (the protocol, buffering, group commit) and its
backends: ``memory`` (in-process), ``file`` (JSONL with checkpoints; its files in ``jsonl``)
and ``redis_log`` (Redis)."""

__all__: list[str] = []
