"""TLS for the listeners of ``serve`` (``--tls-cert`` / ``--tls-key``): wss:// and https://.

The JavaScript SDK refuses ``ws://``; serving TLS here spares a separate terminator in local
development. In production a load balancer usually terminates TLS instead.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["tls_context"]


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context from PEM files; ValueError names the file and the problem (never
    the key's content)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert, key):  # ssl's FileNotFoundError names neither
        if not Path(path).exists():
            raise ValueError(f"TLS file {path} does not exist")
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise ValueError(
            f"TLS files {cert} / {key} are not a PEM certificate and its private key "
            f"({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ValueError(f"TLS files {cert} / {key}: {exc.strerror or exc}") from None
    return context
