"""The load test's verdict: the run's announcement and preflight, the SLOs checked when locust
quits (exit code 3 when one is breached), the summary file and the final CSV rows. Importing
this module registers its locust event listeners."""

from __future__ import annotations

import json
import logging
from typing import Any

from archive import (
    PreflightError,
    final_stats_csv,
    preflight,
    retire_policy,
    summary_path,
    write_summary,
)
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner
from scenario import (
    EMULATOR_URL,
    KEEP_POLICY,
    POLICY_ID,
    PUBLISH_RATE,
    RUN,
    SCENARIO,
    SLO,
    TOKEN,
    WEIGHTS,
)

log = logging.getLogger("loadtest")

__all__ = [
    "USER_ERRORS",
    "evaluate_slos",
]

# -- SLOs ---------------------------------------------------------------------------------------
USER_ERRORS: list[str] = []


@events.user_error.add_listener
def _user_error(user_instance: Any, exception: BaseException, tb: Any, **_: Any) -> None:
    USER_ERRORS.append(f"{type(user_instance).__name__}: {type(exception).__name__}: {exception}")


@events.init.add_listener
def _announce(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    log.info(
        "scenario %s: weights %s, publish rate %.2f/s, run label lt_run=%s, SLOs %s",
        SCENARIO,
        WEIGHTS,
        PUBLISH_RATE,
        RUN,
        SLO,
    )
    if not EMULATOR_URL:
        log.info("LT_EMULATOR_URL not set: gateway sessions do not report propagation")
    if environment.host:
        try:
            preflight(environment.host, TOKEN, publishing=PUBLISH_RATE > 0)
        except PreflightError as exc:
            log.error("preflight failed: %s", exc)
            raise SystemExit(2) from None


@events.test_start.add_listener
def _propagation_rows(environment: Environment, **_: Any) -> None:
    """Every propagation row is in the --csv output, also one without samples (n = 0)."""
    if not isinstance(environment.runner, WorkerRunner):
        for kind in ("control", "streaming", "agent"):
            environment.stats.get(f"propagation {kind}", "PUSH")


def evaluate_slos(environment: Environment) -> list[str]:
    """The breached SLOs of a finished run (empty when all hold)."""
    stats = environment.stats
    breaches: list[str] = []
    propagations = 0
    for (name, _kind), entry in stats.entries.items():
        if entry.num_requests == 0:
            continue
        p99 = entry.get_response_time_percentile(0.99)
        if name.startswith("propagation"):
            propagations += entry.num_requests
            if p99 > SLO["propagation_p99_ms"]:
                breaches.append(f"{name} p99 {p99:.0f} ms > {SLO['propagation_p99_ms']:g} ms")
        elif name.startswith("convergence") and p99 > SLO["convergence_p99_ms"]:
            breaches.append(f"{name} p99 {p99:.0f} ms > {SLO['convergence_p99_ms']:g} ms")
        elif name.startswith("connect") and p99 > SLO["connect_p99_ms"]:
            breaches.append(f"{name} p99 {p99:.0f} ms > {SLO['connect_p99_ms']:g} ms")
    total = stats.total
    if total.num_requests == 0:
        breaches.append("no requests were made")
    elif total.fail_ratio > SLO["fail_ratio"]:
        breaches.append(f"failure ratio {total.fail_ratio:.4f} > {SLO['fail_ratio']}")
    if USER_ERRORS:
        breaches.append(f"{len(USER_ERRORS)} user errors, first: {USER_ERRORS[0][:200]}")
    if propagations < SLO["min_propagations"]:
        breaches.append(f"{propagations} propagation samples < {SLO['min_propagations']:.0f}")
    return breaches


@events.test_stop.add_listener
def _verdict_in_html_report(environment: Environment, **_: Any) -> None:
    """--html: the report (written before ``quitting``) shows the profile in its header."""
    if isinstance(environment.runner, WorkerRunner):
        return
    if getattr(environment.parsed_options, "html_file", None):
        breaches = evaluate_slos(environment)
        mark = "SLO PASS" if not breaches else f"SLO FAIL: {'; '.join(breaches)}"
        environment.profile = f"{environment.profile} | {mark}" if environment.profile else mark


@events.quitting.add_listener
def _check_slos(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    breaches = evaluate_slos(environment)
    summary = {
        name: {
            "n": e.num_requests,
            "fail": e.num_failures,
            "p50_ms": round(e.get_response_time_percentile(0.5), 1),
            "p99_ms": round(e.get_response_time_percentile(0.99), 1),
        }
        for (name, _), e in environment.stats.entries.items()
        if name.split(" ")[0] in ("propagation", "convergence", "connect")
    }
    log.info("loadtest summary: %s", json.dumps(summary, sort_keys=True))
    retired = "kept (LT_KEEP_POLICY)" if KEEP_POLICY else "not published (no publisher)"
    if PUBLISH_RATE > 0 and not KEEP_POLICY and TOKEN and environment.host:
        retired = retire_policy(environment.host, TOKEN, POLICY_ID, RUN)
        log.info("policy %s at the end of the run: %s", POLICY_ID, retired)
    verdict = "fail" if breaches else "pass"
    options = environment.parsed_options
    path = summary_path(getattr(options, "csv_prefix", None))
    if path is not None:
        # locust rewrites <prefix>_stats.csv once a second and not at exit: gateway sessions
        # report propagation as they end, so write the final rows now
        final_stats_csv(environment, f"{options.csv_prefix}_stats.csv")
        write_summary(path, {
            "verdict": verdict, "breaches": breaches, "slo": SLO, "rows": summary,
            "run": RUN, "scenario": SCENARIO, "host": environment.host,
            "policy": {"id": POLICY_ID, "at_end": retired},
            "requests": environment.stats.total.num_requests,
            "failures": environment.stats.total.num_failures,
        })  # fmt: skip
        log.info("SLO verdict %s written to %s", verdict, path)
    if breaches:
        for breach in breaches:
            log.error("SLO breached: %s", breach)
        environment.process_exit_code = 3
    else:
        log.info("all SLOs hold (%s)", ", ".join(f"{k}={v:g}" for k, v in SLO.items()))
        environment.process_exit_code = 0
