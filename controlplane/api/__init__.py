"""REST API: routes, bearer-token auth with roles, one error middleware, OpenAPI document."""
