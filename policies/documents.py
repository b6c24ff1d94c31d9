"""Policy text (YAML or JSON) to a document mapping, before any schema validation.

Text whose first non-blank character is ``{`` is read as JSON, anything else as YAML (safe
loader). Both refuse duplicate keys, which YAML and JSON parsers otherwise resolve silently by
keeping the last one. Problems raise :class:`policies.errors.PolicyValidationError` with field
``<document>`` and rule ``syntax``, ``duplicate_key`` or ``type`` (the document is not a mapping).

:func:`text_violations` is the one check every document passes before schema validation: text
that cannot be written as UTF-8 (JSON may spell a lone surrogate, ``"\\ud800"``) is refused with
rule ``encoding``, naming where it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from policies.errors import PolicyValidationError, Violation
from policies.fields import printable, utf8_problem

__all__ = ["load_document", "text_violations"]

MAX_TEXT_VIOLATIONS = 20


def load_document(text: str) -> Mapping[str, Any]:
    """Parse ``text`` as JSON or YAML; the result must be a mapping."""
    stripped = text.lstrip()
    try:
        if stripped.startswith("{"):
            doc = json.loads(stripped, object_pairs_hook=_json_object)
        else:
            doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except json.JSONDecodeError as exc:
        raise _document_error(
            "syntax", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except _DuplicateKeyError as exc:
        raise _document_error("duplicate_key", str(exc)) from exc
    except yaml.YAMLError as exc:
        raise _document_error("syntax", f"invalid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(doc, Mapping):
        raise _document_error("type", f"a policy must be a mapping, got {_kind(doc)}")
    return doc


class _DuplicateKeyError(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"duplicate key {key!r}")
        out[key] = value
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            line = key_node.start_mark.line + 1
            raise _DuplicateKeyError(f"duplicate key {key!r} at line {line}")
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        where = exc.problem_mark
        place = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        return f"{exc.problem or exc.context or 'syntax error'}{place}"
    return str(exc)


def _document_error(rule: str, message: str) -> PolicyValidationError:
    return PolicyValidationError([Violation("<document>", rule, message)])


def _kind(value: Any) -> str:
    if value is None:
        return "an empty document"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def text_violations(doc: Any) -> list[Violation]:
    """A violation (rule ``encoding``) for each key or string in ``doc`` that is not valid
    Unicode text, at most ``MAX_TEXT_VIOLATIONS``. Iterative: any nesting depth is fine."""
    found: list[Violation] = []
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack and len(found) < MAX_TEXT_VIOLATIONS:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = utf8_problem(value)
            if problem is not None:
                found.append(Violation(path or "<document>", "encoding", problem))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                name = printable(key) if isinstance(key, str) else repr(key)
                where = f"{path}.{name}" if path else name
                if isinstance(key, str) and (problem := utf8_problem(key)) is not None:
                    found.append(Violation(where, "encoding", f"key {problem}"))
                stack.append((where, item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return found
