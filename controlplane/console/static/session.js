// /ui/sessions/{id} (control plane id or upstream id): status, configuration, the log as a
// timeline (new entries appended live) and the configuration in effect at a chosen instant.
import { api } from "./app.js";
import { badge, el, json, section, when } from "./dom.js";

function policyRefs(refs) {
  return (refs || []).map((p) => `${p.id} v${p.version}${p.variant ? ` (${p.variant})` : ""}`).join(", ");
}

// an entry after which what the upstream runs is unknown (config-at's doubts): an `upstream`
// doubt, or an answer recorded `unverified` with an error other than a late answer's
const LATE = "answered after the acknowledgement timeout";
const inDoubt = (e) => e.cause === "upstream"
  || (e.status === "unverified" && Boolean(e.error) && !String(e.error).startsWith(LATE));

function entryItem(e) {
  return el("li", { "data-testid": "timeline-entry", "data-seq": e.seq, "data-status": e.status,
    "data-version": e.version, "data-cause": e.cause },
    el("div", { class: "head" }, el("b", {}, `#${e.seq}`), el("span", { class: "muted" }, when(e.at)),
      el("span", {}, `v${e.version}`), badge(e.status), el("span", {}, `cause ${e.cause}`),
      e.policies && e.policies.length ? el("span", { class: "muted" }, policyRefs(e.policies)) : null,
      inDoubt(e) ? el("span", { "data-testid": "timeline-doubt" }, badge("in doubt", "unverified")) : null),
    e.error ? el("div", { class: "error" }, typeof e.error === "string" ? e.error : json(e.error)) : null,
    e.delta && Object.keys(e.delta).length ? el("pre", { "data-testid": "timeline-delta" }, json(e.delta)) : null);
}

const entryText = (e) => `#${e.seq ?? "?"} ${e.cause}/${e.status} v${e.version}`;

/** The answer of GET …/config-at as `controlplane audit at` prints it: the configuration, the
 *  entry that established it and what that means (never "acknowledged" unless it was), the
 *  pushes in flight, the doubts (entries that leave what the upstream runs unknown), notes. */
function configAt(body, shown) {
  const est = body.established_by || {};
  const doubts = body.doubts || [];
  return el("div", { class: "panel" },
    el("p", { "data-testid": "config-at-session", "data-session": body.session_id },
      body.session_id === shown ? `session ${body.session_id}`
        : el("b", {}, `the call's earlier session ${body.session_id} (this session began later)`)),
    el("p", {}, "audit chain ", el("span", { "data-testid": "config-at-verified", "data-verified": String(body.verified) },
      badge(body.verified ? "verified" : "NOT VERIFIED", body.verified ? "acked" : "rejected")),
    body.policies ? ` · ${policyRefs(body.policies)}` : ""),
    doubts.length ? el("div", { class: "error", "data-testid": "config-at-in-doubt", "data-count": doubts.length },
      badge("in doubt", "unverified"), " the upstream may not run this configuration: ",
      doubts.map((d) => el("div", { "data-testid": "config-at-doubt", "data-seq": d.seq, "data-cause": d.cause,
        "data-status": d.status }, `${entryText(d)} at ${when(d.at)}: ${d.error ?? ""}`))) : null,
    el("pre", { "data-testid": "config-at-config" }, json(body.config)),
    el("p", { "data-testid": "config-at-established", "data-seq": est.seq, "data-status": est.status,
      "data-cause": est.cause }, `established by ${entryText(est)} at ${when(est.at)}: `,
      el("span", { "data-testid": "config-at-meaning" }, est.meaning || "")),
    body.sent_by ? el("p", { class: "muted" }, `sent at #${body.sent_by.seq} (${when(body.sent_by.at)})`) : null,
    (body.pending || []).map((p) => el("p", { "data-testid": "config-at-pending", "data-version": p.version },
      `in flight at that instant: version ${p.version} sent at #${(p.sent || {}).seq}, then `
      + (p.answer ? `${p.answer.status} at #${p.answer.seq} (${when(p.answer.at)})` : "no answer recorded"))),
    proof(body),
    body.notes && body.notes.length ? el("ul", { class: "muted" }, body.notes.map((n) =>
      el("li", { "data-testid": "config-at-note" }, n))) : null);
}

/** The proof behind the answer, as `audit at` prints it: the rebuild's config_hash checks, the
 *  hash chain, and whether a signed checkpoint covers the establishing entry yet. */
function proof(body) {
  const rebuild = body.rebuild || {};
  const chain = body.chain || {};
  const ck = body.checkpoint || {};
  const failures = rebuild.failures || [];
  return el("ul", { "data-testid": "config-at-proof" },
    el("li", { "data-testid": "config-at-rebuild", "data-checked": rebuild.checked ?? "",
      "data-failures": failures.length },
      `rebuild: seq 1 to seq ${rebuild.entries_replayed ?? "?"}, ${rebuild.checked ?? 0} config_hash check(s), `
      + (failures.length ? `${failures.length} FAILED` : "all passed")),
    el("li", { "data-testid": "config-at-chain", "data-ok": String(Boolean(chain.ok)) },
      chain.ok ? "hash chain: ok" : `hash chain: BROKEN at seq ${chain.first_bad_seq}: ${chain.problem}`),
    el("li", { "data-testid": "config-at-checkpoint", "data-covered": String(Boolean(ck.covered)) },
      ck.covered ? `covered by signed checkpoint ${ck.node} #${ck.seq} (commits to seq ${ck.committed_seq})`
        : "NOT covered by a signed checkpoint yet"));
}

export function mount(main, { id }) {
  const head = el("div");
  const summary = el("div");
  const timeline = el("ol", { class: "timeline", "data-testid": "timeline", reversed: true });
  const at = el("input", { type: "text", "data-testid": "config-at-input", size: 32,
    "aria-label": "instant (RFC 3339 or Unix seconds)" });
  const show = el("button", { type: "button", "data-testid": "config-at-show" }, "Show");
  const result = el("div", { "data-testid": "config-at-result" });
  main.append(head, summary,
    section("Configuration at an instant",
      el("p", {}, at, " ", show, " ", el("span", { class: "muted" }, "(compliance role; verified against the audit chain)")),
      result),
    section("Timeline (newest first)", timeline));
  at.value = new Date().toISOString();
  let canonical = null;
  let lastSeq = 0;

  show.addEventListener("click", async () => {
    result.replaceChildren(el("p", { class: "muted" }, "…"));
    try {
      // asked by the page's id, as `audit at ID` is: by an upstream id, a resumed call's
      // earlier session answers the instants before this one began
      const body = await api(`/v1/sessions/${encodeURIComponent(id)}/config-at?at=${encodeURIComponent(at.value.trim())}`);
      result.replaceChildren(configAt(body, canonical));
    } catch (err) {
      result.replaceChildren(el("p", { class: "error", "data-testid": "config-at-error" }, err.message));
    }
  });

  return {
    async refresh() {
      const s = await api(`/v1/sessions/${encodeURIComponent(id)}`);
      canonical = s.id;
      head.replaceChildren(el("h1", {}, "Session ", el("span", { class: "mono", "data-testid": "session-id" }, s.id),
        " ", el("span", { "data-testid": "session-state" }, badge(s.state))));
      const v = s.versions || {};
      summary.replaceChildren(el("div", { class: "grid2" },
        el("div", { class: "panel" }, el("table", {},
          [["upstream id", s.upstream_id ?? "—"], ["kind", s.kind], ["model", s.model], ["node", s.node],
            ["labels", Object.entries(s.labels || {}).map(([k, val]) => `${k}=${val}`).join(", ") || "—"],
            ["versions", `desired ${v.desired ?? "—"} · sent ${v.sent ?? "—"} · acked ${v.acked ?? "—"}`]]
            .map(([k, val]) => el("tr", {}, el("th", {}, k), el("td", { class: "mono" }, val))))),
        el("div", { class: "panel" }, el("div", { class: "muted" }, "effective configuration (what the policies want)"),
          el("pre", { "data-testid": "effective-config" }, json(s.effective_config)),
          el("div", { class: "muted" }, "running upstream (as the record knows it)"),
          (s.in_doubt || []).length ? el("div", { class: "error", "data-testid": "running-in-doubt",
            "data-fields": s.in_doubt.join(",") }, badge("in doubt", "unverified"),
            ` the upstream may not run these as recorded: ${s.in_doubt.join(", ")}`) : null,
          el("pre", { "data-testid": "running-config" }, s.running_config == null ? "unknown" : json(s.running_config)))));
      for (let page = 0; page < 20; page++) {
        const cursor = lastSeq ? `&cursor=seq-${lastSeq}` : "";
        const body = await api(`/v1/sessions/${encodeURIComponent(canonical)}/log?limit=1000${cursor}`);
        for (const e of body.items) {
          timeline.prepend(entryItem(e));
          lastSeq = Math.max(lastSeq, e.seq);
        }
        if (!body.next) break;
      }
    },
  };
}
