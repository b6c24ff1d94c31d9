"""Human output of ``controlplane audit verify`` and ``audit at`` (``--json`` prints the
answers as they are): the chains and checkpoints verified, and the configuration in effect at
an instant with its evidence, its pushes in flight and its doubts (docs/cli.md)."""

from __future__ import annotations

from typing import Any

import yaml

from controlplane.cli.output import utc_instant

__all__ = ["at_text", "verify_text"]


def _when(value: Any) -> str:
    return utc_instant(value) or str(value)


def _keys(checkpoints: dict[str, Any]) -> str:
    trusted = checkpoints.get("trusted_keys") or {}
    if checkpoints.get("trust") == "pinned":
        ids = ", ".join(f"{k[:16]}…" for k in trusted.get("*", []))
        return f"checked against the pinned key(s) {ids} (--public-key)"
    if not trusted:
        return "no key trusted yet"
    ids = ", ".join(f"{node}: {k[:16]}…" for node, keys in trusted.items() for k in keys)
    return (
        f"checked against the keys the trail itself publishes ({ids}); "
        "that proves consistency, not origin: pin keys with --public-key"
    )


def verify_text(answer: dict[str, Any]) -> str:
    lines = []
    items = answer.get("items") or []
    for r in items:
        sid, covered = r.get("session_id"), r.get("covered_seq")
        if r.get("ok"):
            cover = f", checkpointed to seq {covered}" if covered else ""
            lines.append(f"ok      {sid}  {r.get('count')} entries{cover}")
        else:
            lines.append(
                f"BROKEN  {sid}  first bad seq {r.get('first_bad_seq')}: {r.get('problem')}"
            )
    ck = answer.get("checkpoints") or {}
    count, problems = ck.get("count", 0), ck.get("problems") or []
    for p in problems:
        lines.append(f"BAD CHECKPOINT  {p.get('problem')}")
    broken = sum(1 for r in items if not r.get("ok"))
    summary = f"{len(items)} chain(s) verified, {broken} broken"
    if count or problems:
        lines.append(f"checkpoints: {count} from {len(ck.get('nodes') or {})} node(s); "
                     f"signatures {_keys(ck)}")  # fmt: skip
        summary += f"; {count} checkpoint(s), {len(problems)} bad"
    else:
        lines.append("no checkpoints: deletion of a session's newest entries is not detectable")
    if answer.get("origin"):
        lines.append(f"origin: {answer['origin']}")
    lines.append(summary)
    return "\n".join(lines)


def at_text(a: dict[str, Any]) -> str:
    est = a.get("established_by") or {}
    rebuild = a.get("rebuild") or {}
    chain = a.get("chain") or {}
    ck = a.get("checkpoint") or {}
    refs = ", ".join(
        f"{p.get('id')}@{p.get('version')}" + (f"/{p['variant']}" if p.get("variant") else "")
        for p in a.get("policies") or []
    )
    digests = ", ".join(  # which content each version was (sha256 of its document)
        f"{p.get('id')}@{p.get('version')}={str(p['digest'])[:12]}"
        for p in a.get("policies") or []
        if p.get("digest")
    )
    config = yaml.safe_dump(a.get("config") or {}, sort_keys=True, allow_unicode=True).rstrip()
    lines = [
        f"session {a.get('session_id')} at {_when(a.get('at'))}",
        "config:" + ("\n  " + config.replace("\n", "\n  ") if a.get("config") else " {}"),
        f"policies: {refs or '(none)'}",
        *([f"digests: {digests}"] if digests else []),
        f"established by seq {est.get('seq')} at {_when(est.get('at'))}: {est.get('cause')}/"
        f"{est.get('status')}, version {est.get('version')}, hash {str(est.get('hash'))[:16]}…",
        f"  {est.get('meaning')}",
    ]
    sent = a.get("sent_by")
    if sent:
        lines.append(f"  sent at seq {sent.get('seq')} ({_when(sent.get('at'))})")
    named = a.get("policies_by")
    if named:
        lines.append(f"policies named by seq {named.get('seq')} at {_when(named.get('at'))}: "
                     f"{named.get('cause')}/unchanged, version {named.get('version')} (nothing "
                     "sent: the configuration already matched)")  # fmt: skip
    for p in a.get("pending") or []:
        answer = p.get("answer")
        then = "no answer recorded" if not answer else (
            f"{answer.get('status')} at seq {answer.get('seq')} ({_when(answer.get('at'))})"
        )  # fmt: skip
        lines.append(f"in flight at that instant: version {p.get('version')} sent at seq "
                     f"{(p.get('sent') or {}).get('seq')}, then {then}")  # fmt: skip
    failures = rebuild.get("failures") or []
    lines.append(f"rebuild: seq 1 (connect config) to seq {rebuild.get('entries_replayed')}, "
                 f"{rebuild.get('checked')} config_hash check(s), "
                 + ("all passed" if not failures else f"{len(failures)} FAILED"))  # fmt: skip
    lines += [f"  FAILED {f.get('problem')}" for f in failures]
    lines.append("chain: " + ("ok" if chain.get("ok") else f"BROKEN at seq "
                 f"{chain.get('first_bad_seq')}: {chain.get('problem')}"))  # fmt: skip
    if ck.get("covered"):
        seq = max(int(est.get("seq") or 0), int((named or {}).get("seq") or 0))
        lines.append(f"checkpoint: seq {seq} is covered by checkpoint "
                     f"{ck.get('node')} "
                     f"#{ck.get('seq')} (commits to seq {ck.get('committed_seq')})")  # fmt: skip
    else:
        lines.append("checkpoint: NOT covered by a checkpoint yet")
    lines.append("checkpoints: " + ("ok" if ck.get("checkpoints_ok") else "BAD: " + str(
        (ck.get("first_bad") or {}).get("problem"))) + f"; signatures {_keys(ck)}")  # fmt: skip
    lines += [f"note: {n}" for n in a.get("notes") or []]
    doubts = a.get("doubts") or []
    if doubts:  # the record cannot say what ran: never read the config above as applied
        lines.append(f"IN DOUBT: the upstream may not run this config ({len(doubts)} entr"
                     f"{'y' if len(doubts) == 1 else 'ies'} leave it unknown)")  # fmt: skip
        lines += [f"  seq {d.get('seq')} at {_when(d.get('at'))}: {d.get('cause')}/"
                  f"{d.get('status')}, version {d.get('version')}: {d.get('error')}"
                  for d in doubts]  # fmt: skip
    lines.append("VERIFIED" if a.get("verified") else "NOT VERIFIED")
    return "\n".join(lines)
