"""Push engine: sans-I/O per-session state (protocol) and its asyncio driver (engine)."""
