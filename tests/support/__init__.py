"""Test support: real server processes, free ports, fakes we own (clock)."""
