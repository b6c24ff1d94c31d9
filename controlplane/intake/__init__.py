"""Policy intake: policy events and the bus that carries them, the policy store (active set and
history), the embedded durable store, and the authority checks before a publish."""

__all__: list[str] = []
