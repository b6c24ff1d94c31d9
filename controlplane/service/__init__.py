"""The service: ``ControlPlane``, the port the edges and the REST API call."""

__all__: list[str] = []
