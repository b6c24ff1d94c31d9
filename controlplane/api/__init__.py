"""REST API: routes, bearer-token auth with roles, one error middleware, OpenAPI document."""

__all__: list[str] = []
