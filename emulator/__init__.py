"""A wire-faithful local stand-in for AssemblyAI Streaming v3 and the Voice Agent API."""
