"""Who may change a policy, and the locks a publish may not cross (docs/policies.md#ownership,
docs/policies.md#locks). Called by the service before it publishes a policy event.

- :func:`check_owner`: a role below the policy's owner role may not publish, preview, roll
  back, retire or step its waves (403 ``policy_owned``); nor may another team at the owner
  role, below admin, without a grant of the owner team (403 ``policy_owned`` naming the owner
  team and the role needed: docs/security.md#teams).
- :func:`acting_role`: the role a retire or rollback acts with; below compliance only
  experiment policies without a lock (403 ``forbidden``); the rollout guard acts as the owner.
- :func:`check_locks`: a version that would set a field locked by a higher role's active
  policy on sessions both surely target is refused (409 ``field_locked``); clashes that depend
  on live labels come back as warnings (resolution gives the lock owner the field there). A
  lock of another team at the version's owner role holds the same way, and that field may not
  be locked by a second team at all (``controlplane.intake.team_locks``).
- :func:`check_transfer`: an admin handing a policy id to another team (docs/security.md
  #transfers): 409 when it cannot be (admin-owned, already that team's, halted or mid-waves)
  or when the new team's ownership would cross another team's lock (``field_locked``).
"""

from __future__ import annotations

from typing import Any

from controlplane.errors import Conflict, Forbidden, NotFound
from controlplane.intake.store import PolicyStore
from controlplane.intake.team_locks import key_holder, owner_after, team_clashes, transfer_problem
from controlplane.roles import Role, Team, owner_refusal, publish_refusal
from policies.authority import LockClash
from policies.model import Policy

__all__ = [
    "acting_role",
    "acting_team",
    "check_key",
    "check_locks",
    "check_owner",
    "check_transfer",
]


def acting_team(store: PolicyStore, policy_id: str, team: Team | None) -> str | None:
    """The team a change of ``policy_id`` is made for (its event's ``team``): the owner team
    when ``team`` was granted it, else the token's own; None (an internal caller, the rollout
    guard, automatic wave steps): the owner team."""
    owner_team = store.owner_team(policy_id)
    return owner_team if team is None else team.acting_for(owner_team)


def check_owner(
    store: PolicyStore, policy_id: str, role: Role, action: str, team: Team | None = None
) -> None:
    """403 ``policy_owned`` when ``role`` is below the role owning ``policy_id``, or at that
    role (below admin) acts for another team than the owner team (``team`` None: an internal
    caller, checked by role only)."""
    owner = store.owner_role(policy_id)
    owner_team = store.owner_team(policy_id)
    acting = acting_team(store, policy_id, team)
    refused = owner_refusal(role, acting, owner, owner_team)
    if refused is not None and owner is not None and role == owner:
        needed = refused[1]
        raise Forbidden(
            f"policy {policy_id!r} is owned by team {owner_team!r} (role {owner.label}); team "
            f"{acting!r} may not {action} it: that needs role {needed.label} or higher, or a "
            f"token granted team {owner_team!r}",
            code="policy_owned",
            details={"id": policy_id, "owner_role": owner.label, "owner_team": owner_team,
                     "role": role.label, "team": acting, "required_role": needed.label},
        )  # fmt: skip
    if owner is not None and role < owner:
        raise Forbidden(
            f"policy {policy_id!r} is owned by role {owner.label}; role {role.label} may not "
            f"{action} it",
            code="policy_owned",
            details={"id": policy_id, "owner_role": owner.label, "role": role.label,
                     "required_role": owner.label},
        )  # fmt: skip


def acting_role(
    store: PolicyStore, policy_id: str, role: Role | None, action: str, policy: Policy,
    team: Team | None = None,
) -> Role:  # fmt: skip
    """The role a retire or rollback of ``policy`` (the version retired, or rolled back to)
    acts with: ``role`` once checked (with ``team``); the owner's when ``role`` is None (the
    rollout guard)."""
    if role is None:
        return store.owner_role(policy_id) or Role.ADMIN
    check_owner(store, policy_id, role, action, team)
    reason = publish_refusal(role, policy.document())
    if reason is not None:
        raise Forbidden(
            f"role {role.label} may {action} only experiment policies without a lock: "
            f"{reason}; this requires role compliance",
            details={"required_role": Role.COMPLIANCE.label, "role": role.label},
        )
    return role


def check_key(store: PolicyStore, policy: Policy, role: Role, team: Team | None = None) -> None:
    """403 ``policy_owned`` when ``policy`` would run an experiment key another policy id
    ran that ``role`` acting for ``team`` may not change (docs/security.md#teams)."""
    acting = acting_team(store, policy.id, team)
    held = key_holder(store, policy, role, acting, team.grants if team else frozenset())
    if held is not None:
        raise Forbidden(
            f"experiment {held.key!r} is run by policy {held.policy!r} (team "
            f"{held.owner_team!r}, role {held.owner_role.label}); team {acting!r} may not run "
            f"it in policy {policy.id!r}: that needs role {held.needed.label} or higher, or a "
            f"token granted team {held.owner_team!r}; use another experiment key",
            code="policy_owned",
            details={"id": held.policy, "experiment": held.key, "owner_role": held.owner_role.label,
                     "owner_team": held.owner_team, "role": role.label, "team": acting,
                     "required_role": held.needed.label},
        )  # fmt: skip


def check_transfer(store: PolicyStore, policy: Policy, team: str) -> None:
    """404 / 409 when ``policy`` (its current document, next version) cannot be handed to
    ``team`` (``team_locks.transfer_problem``), or 409 ``field_locked`` when, owned by
    ``team`` at its owner role, it would cross another team's lock."""
    found = transfer_problem(store, policy.id, team)
    if found is not None:
        why, code = found
        if code == "policy_not_found":
            raise NotFound(why, code=code)
        raise Conflict(why, code=code, details={"id": policy.id, "team": team})
    owner = store.owner_role(policy.id)
    assert owner is not None
    if not store.latest(policy.id).retired:  # a retired policy locks and sets nothing
        check_locks(store, policy, owner, Team(team), transfer=True)


def check_locks(
    store: PolicyStore, policy: Policy, role: Role, team: Team | None = None, *,
    transfer: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """The lock warnings of publishing ``policy`` as ``role`` for ``team``; 409
    ``field_locked`` when it would set a field a higher role locks on sessions that surely
    carry both policies, or cross a lock another team of its owner role holds (set it there,
    or lock it too wherever both may meet: docs/security.md#locks-and-teams). ``transfer``:
    as the policy handed to ``team`` at its owner role."""
    acting = team.name if transfer and team is not None else acting_team(store, policy.id, team)
    rank, owner_team = owner_after(store, policy.id, role, acting, transfer=transfer)
    clashes = team_clashes(policy, rank, owner_team, store.active())
    items = [_clash(c) for c in clashes]
    refused = [item for clash, item in zip(clashes, items, strict=True) if clash.refused]
    if refused:
        first = refused[0]
        verb = "lock" if first["locks"] else "set"
        details = {"field": first["field"], "policy": first["policy"],
                   "version": first["version"], "owner_role": first["owner_role"],
                   "role": role.label, "conflicts": refused}  # fmt: skip
        if first["owner_role"] == rank.label:  # another team of the same role
            details.update(owner_team=first["owner_team"], team=owner_team)
            holder = (f"policy {first['policy']!r} version {first['version']} (role "
                      f"{first['owner_role']}, team {first['owner_team']!r})")  # fmt: skip
            why = (f"only its team's policies (or an admin's) may {verb} it; team "
                   f"{owner_team!r} needs role admin, or a token granted team "
                   f"{first['owner_team']!r}")  # fmt: skip
        else:
            holder = (f"policy {first['policy']!r} version {first['version']} (role "
                      f"{first['owner_role']})")  # fmt: skip
            why = f"a {role.label} policy may not set it there, whatever its priority"
        raise Conflict(
            f"policy {policy.id!r} {'locks' if first['locks'] else 'sets'} field "
            f"{first['field']!r}, which {holder} locks on sessions this policy targets; {why}",
            code="field_locked",
            details=details,
        )
    return items


def _clash(clash: LockClash) -> dict[str, Any]:
    owner = Role(clash.rank).label
    message = (
        f"field {clash.field!r} is locked by policy {clash.policy!r} version {clash.version} "
        f"(role {owner}" + (f", team {clash.team!r})" if clash.team is not None else ")")
    )
    if not clash.refused:
        message += " on sessions carrying both policies' labels; the lock wins there"
    return {"code": "locked_field", "field": clash.field, "policy": clash.policy,
            "version": clash.version, "owner_role": owner, "owner_team": clash.team,
            "certain": clash.certain, "locks": clash.locks, "message": message}  # fmt: skip
