"""``EntryTemplate.seal`` (members pre-encoded, the append hot path) must produce exactly
the hash and the bytes of ``seal`` over the whole body, which the chain's definition is
written in, and the entry a ``Pending`` rebuilds from those bytes must be the one ``seal``
built."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sessions.versionchain import Canonical, EntryTemplate, canonical_json, seal
from sessions.versionlog.core import CAUSES, STATUSES, Pending, canonical

TEXT = st.text(max_size=12)  # includes lone surrogates: both paths must refuse them alike
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
OBJ = st.dictionaries(TEXT, JSON, max_size=5)
HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


def _body(**m: Any) -> dict[str, Any]:
    body = {k: v for k, v in m.items() if k != "config"}
    if m["config"] is not None:
        body["config"] = m["config"]
    return body


@settings(max_examples=300, deadline=None)
@given(
    at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    cause=st.sampled_from(CAUSES),
    config=st.one_of(st.none(), OBJ),
    config_hash=HEX,
    delta=st.one_of(st.none(), OBJ),
    error=st.one_of(st.none(), TEXT),
    policies=st.lists(
        st.fixed_dictionaries(
            {"id": TEXT, "version": st.integers(1, 10**6), "variant": st.none() | TEXT}
        ),
        max_size=3,
    ),
    prev_hash=HEX,
    seq=st.integers(1, 10**9),
    session_id=TEXT,
    status=st.sampled_from(STATUSES),
    version=st.integers(0, 10**9),
    wire=st.one_of(st.none(), OBJ),
)
@example(  # keys that sort differently by code point than by UTF-16, and non-ASCII text
    at=1.5, cause="policy", config={"é": 1, "z": [1.0, True]}, config_hash="0" * 64,
    delta={"\U0001f600": "x", "\uffff": None}, error="ü", policies=[], prev_hash="f" * 64,
    seq=1, session_id="s/ü", status="sent", version=2, wire={"a": {"b": [None, -0.0]}},
)  # fmt: skip
def test_same_entry_and_bytes_as_seal(**m: Any) -> None:
    def fast() -> tuple[str, bytes]:
        template = EntryTemplate(
            cause=m["cause"],
            config=None if m["config"] is None else canonical(m["config"]),
            config_hash=m["config_hash"],
            delta=None if m["delta"] is None else canonical(m["delta"]),
            error=m["error"],
            policies=canonical(m["policies"]),
            status=m["status"],
            wire=None if m["wire"] is None else canonical(m["wire"]),
        )
        return template.seal(m["at"], m["prev_hash"], m["seq"], m["session_id"], m["version"])

    try:
        want = seal(_body(**m))
    except (UnicodeEncodeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            fast()
        return
    entry, line = want
    digest, fast_line = fast()
    assert (digest, fast_line) == (entry.hash, line)
    assert Pending(entry.session_id, entry.seq, digest, fast_line).entry == entry


def test_non_finite_times_are_refused_like_the_encoder() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            canonical_json({"at": bad})
        with pytest.raises(ValueError):
            EntryTemplate(
                cause="policy", config=None, config_hash="0" * 64, delta=None, error=None,
                policies=Canonical.of_plain([]), status="sent", wire=None,
            ).seal(bad, "0" * 64, 1, "s", 1)  # fmt: skip
