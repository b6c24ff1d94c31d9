// /ui/: policies with the current version's rollout bar, and live sessions by kind and state.
import { api, apiAll } from "./app.js";
import { badge, el, section, when } from "./dom.js";
import { rolloutBar, settledPercent } from "./policy.js";

const MAX_POLICIES = 50; // rollout calls per refresh
const MAX_CHANGES = 10; // recent changes shown, and version-history calls per refresh
const MAX_SESSION_PAGES = 5; // GET /v1/sessions pages of 1,000 per refresh: beyond, the page says so

/** The latest change records across policies (publish, rollback, retire; halts from the
 *  rollouts already read), newest first. */
async function recentChanges(rollouts) {
  const all = await apiAll("/v1/policies?include_retired=true", 5);
  const latest = all.slice().sort((a, b) => String(b.at).localeCompare(String(a.at))).slice(0, MAX_CHANGES);
  const histories = await Promise.all(latest.map((p) =>
    apiAll(`/v1/policies/${encodeURIComponent(p.id)}/versions?limit=1000`, 1)));
  const changes = histories.flat().map((v) => ({ id: v.id, action: v.action, actor: v.actor,
    at: v.at, reason: v.reason, version: v.version }));
  for (const r of rollouts) {
    if (r.halt) changes.push({ id: r.id, action: "halt", actor: r.halt.actor, at: r.halt.at,
      reason: r.halt.reason, version: r.halt.version });
  }
  return changes.sort((a, b) => String(b.at).localeCompare(String(a.at)) || b.version - a.version)
    .slice(0, MAX_CHANGES);
}

export function mount(main) {
  const policies = el("div");
  const sessions = el("div");
  const changes = el("div");
  main.append(el("h1", {}, "Overview"), section("Policies", policies), section("Recent changes", changes),
    section("Sessions", sessions));
  return {
    async refresh() {
      const list = (await api("/v1/policies")).items;
      const shown = list.slice(0, MAX_POLICIES);
      const rollouts = await Promise.all(shown.map((p) => api(`/v1/policies/${encodeURIComponent(p.id)}/rollout`)));
      policies.replaceChildren(list.length ? el("table", { "data-testid": "policies" },
        el("tr", {}, ["policy", "version", "state", "published", "by", "rolled out", ""].map((h) => el("th", {}, h))),
        shown.map((p, i) => {
          const r = rollouts[i];
          const rows = r.versions.filter((row) => row.version === r.version);
          const cur = { targeted: 0, pending: 0, sent: 0, acknowledged: 0, unverified: 0, rejected: 0, unchanged: 0,
            in_doubt: 0 };
          for (const row of rows) for (const k of Object.keys(cur)) cur[k] += row[k] || 0;
          const pct = settledPercent(cur);
          return el("tr", { "data-testid": "policy-row", "data-policy": p.id },
            el("td", {}, el("a", { href: `/ui/policies/${encodeURIComponent(p.id)}` }, p.id)),
            el("td", {}, `v${p.version}`),
            el("td", {}, badge(r.state || r.status), r.halt ? el("div", { class: "error", "data-testid": "policy-halt" },
              `v${r.halt.version} halted: ${r.halt.reason}`) : null),
            el("td", {}, when(p.published_at || p.at)), el("td", { class: "mono" }, p.actor || ""),
            el("td", { class: "num", "data-testid": "policy-percent" },
              pct === null ? "—" : `${pct} % of ${cur.targeted}`),
            el("td", {}, rolloutBar(cur, "policy-bar")));
        }),
        list.length > MAX_POLICIES ? el("tr", {}, el("td", { colspan: 7, class: "muted" },
          `${list.length - MAX_POLICIES} more not shown`)) : null)
        : el("p", { class: "muted" }, "No active policy."));
      const recent = await recentChanges(rollouts);
      changes.replaceChildren(recent.length ? el("table", { "data-testid": "recent-changes" },
        el("tr", {}, ["when", "action", "policy", "version", "by", "reason"].map((h) => el("th", {}, h))),
        recent.map((c) => el("tr", { "data-testid": "recent-change", "data-action": c.action, "data-policy": c.id,
          "data-version": c.version },
          el("td", {}, when(c.at)), el("td", {}, badge(c.action, c.action === "halt" ? "rejected" : undefined)),
          el("td", {}, el("a", { href: `/ui/policies/${encodeURIComponent(c.id)}` }, c.id)),
          el("td", {}, `v${c.version}`), el("td", { class: "mono" }, c.actor || ""), el("td", {}, c.reason || ""))))
        : el("p", { class: "muted" }, "No change yet."));
      const live = await apiAll(`/v1/sessions?limit=1000`, MAX_SESSION_PAGES);
      const counts = new Map();
      const states = new Set();
      for (const s of live) {
        states.add(s.state);
        const row = counts.get(s.kind) || new Map();
        row.set(s.state, (row.get(s.state) || 0) + 1);
        counts.set(s.kind, row);
      }
      const cols = [...states].sort();
      // newest first (created_at), of the sessions read
      const newest = live.slice().sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0)).slice(0, 20);
      sessions.replaceChildren(live.length ? el("div", {},
        live.truncated ? el("p", { class: "error", "data-testid": "sessions-truncated", "data-read": live.length },
          `Counted from the first ${live.length} live sessions only: more exist, so these figures are lower bounds `
          + "(GET /v1/sessions pages through all of them).") : null,
        el("table", { "data-testid": "sessions-by-kind", "data-complete": String(!live.truncated) },
          el("tr", {}, el("th", {}, "kind"), cols.map((c) => el("th", { class: "num" }, c)), el("th", { class: "num" }, "total")),
          [...counts.entries()].sort().map(([kind, row]) => el("tr", { "data-kind": kind },
            el("td", {}, kind), cols.map((c) => el("td", { class: "num", "data-state": c }, row.get(c) || 0)),
            el("td", { class: "num" }, [...row.values()].reduce((a, b) => a + b, 0))))),
        el("h2", {}, live.truncated ? "Recent sessions (newest of those read)" : "Recent sessions"),
        el("table", {}, newest.map((s) => el("tr", { "data-testid": "recent-session", "data-session": s.id },
          el("td", {}, el("a", { class: "mono", href: `/ui/sessions/${encodeURIComponent(s.id)}` }, s.id)),
          el("td", {}, s.kind), el("td", {}, badge(s.state)), el("td", { class: "mono" }, s.upstream_id || "")))))
        : el("p", { class: "muted" }, "No live session."));
    },
  };
}
