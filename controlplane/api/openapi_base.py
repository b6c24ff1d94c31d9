"""What every part of the OpenAPI document uses: the JSON media type, references to component
schemas, a JSON response, an open object and a paginated list."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["JSON", "OBJ", "json_content", "list_of", "ref"]

JSON: Final = "application/json"

OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def list_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": ref(name)},
            "next": {"type": ["string", "null"], "description": "cursor of the next page"},
        },
    }
