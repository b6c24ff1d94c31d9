"""The edges: client-facing sockets (gateway ``/v3/ws`` ``/v1/ws``, control channel
``/v1/control``), their admission, labels, token passthrough, and the control channel's client
library."""

__all__: list[str] = []
