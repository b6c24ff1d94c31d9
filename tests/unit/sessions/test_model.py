"""Session model: JSON shape and exact round trip."""

from __future__ import annotations

import json

import pytest

from policies.provenance import PolicyRef
from sessions.model import SESSION_KINDS, Session, SessionState


def full_session() -> Session:
    ref = PolicyRef("eu-disclosure", 4, None)
    variant = PolicyRef("upsell-q4", 2, "enterprise-pitch")
    return Session(
        id="sess-ü-1",
        kind="voice-agent-v1",
        model="u3-rt-pro",
        labels={"region": "eu-west-1", "tenant": "acme"},
        node="node-a",
        client_config={"prompt": "client", "keyterms": ("a", "b")},
        effective_config={
            "prompt": "policy prompt",
            "system_prompt": "be nice",
            "keyterms": ("acme", "gdpr"),
            "max_turn_silence_ms": 2500,
            "vad_threshold": 0.5,
        },
        running_config={"prompt": "client", "keyterms": ("acme", "gdpr")},
        provenance={"prompt": ref, "system_prompt": variant},
        applied=(ref, variant),
        desired_version=7,
        sent_version=6,
        acked_version=5,
        state=SessionState.PENDING,
        created_at=1_790_000_000.25,
        updated_at=1_790_000_010.5,
        ended_at=1_790_000_020.0,
        end_cause="client_closed",
        upstream_id="up-123",
    )


def test_to_dict_shape_is_json_native() -> None:
    raw = full_session().to_dict()
    assert raw["versions"] == {"desired": 7, "sent": 6, "acked": 5}
    assert raw["state"] == "pending"
    assert raw["effective_config"]["keyterms"] == ["acme", "gdpr"]
    assert raw["running_config"] == {"prompt": "client", "keyterms": ["acme", "gdpr"]}
    assert Session(id="old", kind="streaming-v3", model="m").to_dict()["running_config"] is None
    assert raw["applied"][1] == {"id": "upsell-q4", "version": 2, "variant": "enterprise-pitch"}
    assert raw["provenance"]["prompt"] == {"id": "eu-disclosure", "version": 4, "variant": None}
    for field in ("desired_version", "sent_version", "acked_version"):
        assert field not in raw
    assert json.loads(json.dumps(raw)) == raw  # nothing JSON cannot carry


@pytest.mark.parametrize(
    "session",
    [
        full_session(),
        Session(id="minimal", kind="streaming-v3", model="universal-streaming-english"),
    ],
    ids=["full", "minimal"],
)
def test_round_trip_through_json_is_exact(session: Session) -> None:
    back = Session.from_dict(json.loads(json.dumps(session.to_dict())))
    assert back == session
    assert type(back.effective_config.get("keyterms", ())) is tuple
    assert type((back.running_config or {}).get("keyterms", ())) is tuple
    assert type(back.state) is SessionState
    assert all(type(ref) is PolicyRef for ref in back.applied)


def test_int_and_float_values_keep_their_type() -> None:
    session = full_session()
    back = Session.from_dict(json.loads(json.dumps(session.to_dict())))
    assert type(back.effective_config["max_turn_silence_ms"]) is int
    assert type(back.effective_config["vad_threshold"]) is float


def test_copy_is_independent() -> None:
    session = full_session()
    twin = session.copy()
    twin.labels["region"] = "us-east-1"
    twin.effective_config["prompt"] = "changed"
    assert twin.running_config is not None
    twin.running_config["prompt"] = "changed"
    twin.provenance.clear()
    assert session == full_session()


def test_unknown_kind_is_refused() -> None:
    assert SESSION_KINDS == ("streaming-v3", "voice-agent-v1")
    with pytest.raises(ValueError, match="unknown session kind"):
        Session(id="x", kind="websocket", model="m")


def test_state_values() -> None:
    assert [str(s) for s in SessionState] == [
        "synced",
        "pending",
        "unverified",
        "rejected",
        "ended",
    ]
    assert not Session(id="x", kind="streaming-v3", model="m", state=SessionState.ENDED).live
