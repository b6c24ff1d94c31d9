"""The ``controlplane`` console script: serve, emulator, and the commands that talk to a running
control plane over its REST API (``controlplane.cli.main``)."""

from controlplane.cli.main import main

__all__ = ["main"]
