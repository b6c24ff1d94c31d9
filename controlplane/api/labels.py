"""Label syntax: keys, values, label patches and session selectors.

Keys match ``[A-Za-z0-9_.-]{1,63}``; values are at most 256 characters without control
characters. A selector is ``k=v,k=v2`` (a repeated key means any of its values) and/or
``k in (a,b)``; it becomes the ``{key: [values]}`` mapping the service takes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from controlplane.api.inputs import check_fields, tname
from controlplane.errors import BadRequest
from controlplane.labels import LABEL_KEY, MAX_LABEL_VALUE_CHARS, MAX_LABELS_PER_PATCH

__all__ = [
    "LABEL_KEY",
    "MAX_LABELS_PER_PATCH",
    "MAX_LABEL_VALUE_CHARS",
    "check_label_key",
    "check_label_value",
    "parse_labels_patch",
    "parse_selector",
]

MAX_SELECTOR_TERMS: Final = 64
MAX_SELECTOR_CHARS: Final = 4096

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_IN_TERM = re.compile(r"(?s)\s*(\S+?)\s+in\s*\((.*)\)\s*")


def parse_labels_patch(body: Mapping[str, Any]) -> dict[str, str | None]:
    """``{"labels": {"k": "v" | null}}`` -> {key: value or None (remove)}."""
    check_fields(body, ("labels",))
    labels = body.get("labels")
    if not isinstance(labels, dict):
        raise BadRequest(
            f'"labels" must be an object of key -> string or null, got {tname(labels)}'
        )
    if not labels:
        raise BadRequest('"labels" must set or remove at least one label')
    if len(labels) > MAX_LABELS_PER_PATCH:
        raise BadRequest(f'"labels" may change at most {MAX_LABELS_PER_PATCH} labels at once')
    out: dict[str, str | None] = {}
    for key, value in labels.items():
        check_label_key(f"labels key {key!r:.80}", key)
        if value is not None:
            if not isinstance(value, str):
                raise BadRequest(f'"labels.{key}" must be a string or null, got {tname(value)}')
            check_label_value(f'"labels.{key}"', value)
        out[key] = value
    return out


def check_label_key(what: str, key: str) -> None:
    if not LABEL_KEY.fullmatch(key):
        raise BadRequest(f"{what} must match [A-Za-z0-9_.-]{{1,63}}")


def check_label_value(what: str, value: str) -> None:
    if len(value) > MAX_LABEL_VALUE_CHARS:
        raise BadRequest(f"{what} is {len(value)} characters; the limit is {MAX_LABEL_VALUE_CHARS}")
    if _CONTROL.search(value):
        raise BadRequest(f"{what} must not contain control characters")


def parse_selector(raw: Iterable[str]) -> dict[str, list[str]] | None:
    """``k=v,k=v2,j in (a,b)`` -> {"k": ["v", "v2"], "j": ["a", "b"]}; repeated keys are any-of.

    Several ``selector`` parameters combine as if joined by commas.
    """
    text = ",".join(part for part in raw if part.strip())
    if not text.strip():
        return None
    if len(text) > MAX_SELECTOR_CHARS:
        raise BadRequest(f"selector is over {MAX_SELECTOR_CHARS} characters")
    terms: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > 1:
                raise BadRequest("selector: nested parentheses are not allowed")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise BadRequest("selector: unbalanced ')'")
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise BadRequest("selector: unbalanced '(' (expected 'key in (v1,v2)')")
    terms.append(text[start:])
    if len(terms) > MAX_SELECTOR_TERMS:
        raise BadRequest(f"selector has over {MAX_SELECTOR_TERMS} terms")
    out: dict[str, list[str]] = {}
    for term in terms:
        key, values = _parse_term(term)
        bucket = out.setdefault(key, [])
        bucket.extend(v for v in values if v not in bucket)
    return out


def _parse_term(term: str) -> tuple[str, list[str]]:
    rule = "must be key=value or key in (v1,v2)"
    if not term.strip():
        raise BadRequest(f"selector: empty term (terms are separated by commas; each {rule})")
    match = _IN_TERM.fullmatch(term)
    if match:
        key, values = match.group(1), [v.strip() for v in match.group(2).split(",")]
    elif "=" in term and "(" not in term and ")" not in term:
        key, _, value = term.partition("=")
        key, values = key.strip(), [value.strip()]
    else:
        raise BadRequest(f"selector: term {term.strip()!r:.80} {rule}")
    check_label_key(f"selector key {key!r:.80}", key)
    for value in values:
        if not value:
            raise BadRequest(f"selector: empty value for key {key!r}")
        check_label_value(f"selector value for {key!r}", value)
    return key, values
