"""Wire dialects, sans-I/O. One module per protocol; each starts with its limits table.

- ``streaming_v3``: AssemblyAI Universal Streaming v3 (``UpdateConfiguration``; no ack).
- ``voice_agent_v1``: AssemblyAI Voice Agent API (``session.update`` → ``session.updated``).
"""
