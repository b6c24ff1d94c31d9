"""Load test of the control plane: live voice sessions plus a policy publisher.

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 2m --host http://127.0.0.1:8080

User classes (pick some on the command line, e.g. ``... ControlUser PublisherUser``):

* ``StreamingUser`` — a Universal Streaming v3 session through the gateway (``/v3/ws``)
  sending real-time 50 ms PCM frames (tone/silence turns) to the upstream (the emulator).
* ``AgentUser`` — a Voice Agent session through the gateway (``/v1/ws``) sending real-time
  50 ms ``input.audio`` frames.
* ``ControlUser`` — a control-channel session (``/v1/control``): registers, receives
  ``push`` frames, reports ``applied``.
* ``PublisherUser`` — publishes a new version of policy ``LT_POLICY_ID`` at ``LT_PUBLISH_RATE``
  versions per second to the sessions of this run (label ``lt_run``).

Besides the usual request rows, the run reports (request type ``PUSH`` / ``CONVERGE``):

* ``propagation <kind>`` — publish → the session got the version. Every published prompt
  carries ``[lt:<policy>:<seq>:<publish wall ms>]``; control users time the ``push`` frame on
  receipt, gateway users read the upstream's receipt time (``at`` of the emulator's timeline,
  ``LT_EMULATOR_URL``) when their session ends. Same clock: run locust on the service's host
  (or keep clocks in sync).
* ``convergence control`` — publish → the last control session of this process that was live
  at publish time got it (the publisher waits for it, bounded by ``LT_CONVERGENCE_TIMEOUT_S``).
* ``convergence rollout`` — publish → ``GET /v1/policies/{id}/rollout`` shows nothing pending.
* ``connect <kind>`` — handshake until ``Begin`` / ``session.ready`` / ``registered``.
* failures: refused or dropped connections, upstream ``Error`` / ``session.error`` frames,
  control-channel ``error`` frames, publishes that are not 201.

Scenarios (``LT_SCENARIO``): ``steady`` (held sessions, a version every 5 s), ``broadcast``
(mostly control sessions, a version every second to all of them), ``storm`` (3 s sessions,
connect storm, no publisher), ``churn`` (2–8 s sessions, a version every second). Any preset
value can be overridden: ``LT_WEIGHTS=streaming=3,agent=1,control=4``, ``LT_PUBLISH_RATE``,
``LT_SESSION_S`` (``0`` = held until the end, ``5``, or ``2-8``).

SLOs, checked when locust quits (exit code 3 when one is breached, else 0):
``LT_SLO_PROPAGATION_P99_MS`` (2000), ``LT_SLO_CONVERGENCE_P99_MS`` (5000),
``LT_SLO_CONNECT_P99_MS`` (2000), ``LT_SLO_FAIL_RATIO`` (0.01),
``LT_SLO_MIN_PROPAGATIONS`` (0: how many propagation samples the run must have).

Other settings: ``LT_TOKEN`` (bearer token with the compliance or admin role; also used for
the control channel), ``LT_API_KEY`` (upstream key the gateway forwards; default
``loadtest-key``), ``LT_EMULATOR_URL`` (e.g. ``http://127.0.0.1:8090``), ``LT_RUN`` (run label;
random per process — set the same value on every worker in distributed mode),
``LT_POLICY_ID`` (``loadtest``), ``LT_PROMPT_CHARS`` (165), ``LT_KEYTERMS`` (0),
``LT_AUDIO`` (``turns`` or ``silence``), ``LT_STREAMING_MODEL``, ``LT_CONVERGENCE_TIMEOUT_S``
(10), ``LT_KEEP_POLICY`` (``1`` keeps the run's policy; by default it is retired when the run
ends). A preflight stops the run (exit code 2) when ``--host`` is unreachable or refuses
``LT_TOKEN``; ``--csv PREFIX`` adds ``PREFIX_summary.json`` with the SLO verdict (docs/loadtest.md).
Convergence needs the publisher and the sessions in the same process (run locust
without workers, or read propagation only).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from publisher_user import PublisherUser
from session_users import AgentUser, ControlUser, StreamingUser
from slos import evaluate_slos  # importing it registers the SLO checks

__all__ = ["AgentUser", "ControlUser", "PublisherUser", "StreamingUser", "evaluate_slos"]
