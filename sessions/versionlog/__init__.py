"""The per-session version log: ``core`` (the protocol, buffering, the in-memory backend), ``file``
(the JSONL backend with checkpoints) and ``redis_log`` (the Redis backend)."""

__all__: list[str] = []
