"""The load test's publisher: a new version of ``LT_POLICY_ID`` for this run's sessions at a
fixed rate, timing convergence of the rollout view and of this process's control sessions."""

from __future__ import annotations

import logging
import time

import gevent
from locust import HttpUser, constant, constant_pacing, task
from payloads import policy_doc
from run_state import LIVE_CONTROL, PUBLISHED, SEQ, Publish, SessionError, fire
from scenario import (
    CONVERGENCE_TIMEOUT_S,
    KEYTERMS,
    POLICY_ID,
    PROMPT_CHARS,
    PUBLISH_RATE,
    RUN,
    TOKEN,
)

log = logging.getLogger("loadtest")

__all__ = [
    "PublisherUser",
]


# -- publisher ---------------------------------------------------------------------------------
class PublisherUser(HttpUser):
    """Publishes a new version of ``LT_POLICY_ID`` (to this run's sessions) at a fixed rate."""

    fixed_count = 1 if PUBLISH_RATE > 0 else 0
    weight = 0
    wait_time = constant_pacing(1 / PUBLISH_RATE) if PUBLISH_RATE > 0 else constant(1)

    def on_start(self) -> None:
        if not TOKEN:
            log.error("LT_TOKEN is not set: the publisher cannot publish")

    @task
    def publish(self) -> None:
        seq = next(SEQ)
        published = time.time()
        record = Publish(published, set(LIVE_CONTROL))
        PUBLISHED[seq] = record  # before the POST: pushes can arrive before its answer
        doc = policy_doc(
            POLICY_ID,
            seq,
            published_ms=round(published * 1000),
            labels={"lt_run": RUN},
            prompt_chars=PROMPT_CHARS,
            keyterms=KEYTERMS,
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with self.client.post(
            "/v1/policies", json=doc, headers=headers, catch_response=True, name="POST /v1/policies"
        ) as resp:
            if resp.status_code != 201:
                resp.failure(f"publish answered {resp.status_code}: {resp.text[:200]}")
                PUBLISHED.pop(seq, None)
                return
        self.wait_rollout(published, headers)
        self.wait_control(seq, record)
        for old in [s for s in PUBLISHED if s < seq - 50]:
            PUBLISHED.pop(old, None)

    def wait_rollout(self, published: float, headers: dict[str, str]) -> None:
        """Publish → the service's rollout view shows nothing pending for the latest version."""
        deadline = time.monotonic() + CONVERGENCE_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.client.get(
                f"/v1/policies/{POLICY_ID}/rollout",
                headers=headers,
                name="GET /v1/policies/[id]/rollout",
                catch_response=True,
            ) as r:
                if r.status_code != 200:
                    r.failure(f"rollout answered {r.status_code}")
                    return
                body = r.json()
            latest = body.get("version")
            rows = body.get("versions", [])
            if all(row["pending"] == 0 and row["version"] == latest for row in rows):
                fire(
                    self.environment,
                    "CONVERGE",
                    "convergence rollout",
                    (time.time() - published) * 1000,
                )
                return
            gevent.sleep(0.05)
        fire(
            self.environment,
            "CONVERGE",
            "convergence rollout",
            CONVERGENCE_TIMEOUT_S * 1000,
            SessionError(f"still pending after {CONVERGENCE_TIMEOUT_S}s"),
        )

    def wait_control(self, seq: int, record: Publish) -> None:
        """Publish → the last control session (live at publish time, still live) got it."""
        if not record.targets:
            return
        deadline = time.monotonic() + CONVERGENCE_TIMEOUT_S
        while time.monotonic() < deadline:
            waiting = [s for s in record.targets if s not in record.receipts and s in LIVE_CONTROL]
            if not waiting:
                break
            gevent.sleep(0.01)
        else:
            missing = [s for s in record.targets if s not in record.receipts and s in LIVE_CONTROL]
            if missing:
                fire(
                    self.environment,
                    "CONVERGE",
                    "convergence control",
                    CONVERGENCE_TIMEOUT_S * 1000,
                    SessionError(
                        f"{len(missing)} of {len(record.targets)} control sessions "
                        f"without version {seq} after {CONVERGENCE_TIMEOUT_S}s"
                    ),
                )
                return
        if record.receipts:
            ms = (max(record.receipts.values()) - record.at) * 1000
            fire(self.environment, "CONVERGE", "convergence control", ms)
