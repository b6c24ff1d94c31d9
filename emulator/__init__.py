"""A wire-faithful local stand-in for AssemblyAI Streaming v3 and the Voice Agent API.

Entry points: ``emulator.server.build_app(settings)`` (an aiohttp application),
``controlplane emulator`` / ``python -m emulator`` (``emulator.cli``). See docs/emulator.md.
"""

__all__: list[str] = []
