// /ui/sessions/{id} (control plane id or upstream id): status, configuration, the log as a
// timeline (new entries appended live) and the configuration in effect at a chosen instant.
import { api } from "./app.js";
import { badge, el, json, section, when } from "./dom.js";

function policyRefs(refs) {
  return (refs || []).map((p) => `${p.id} v${p.version}${p.variant ? ` (${p.variant})` : ""}`).join(", ");
}

function entryItem(e) {
  return el("li", { "data-testid": "timeline-entry", "data-seq": e.seq, "data-status": e.status,
    "data-version": e.version, "data-cause": e.cause },
    el("div", { class: "head" }, el("b", {}, `#${e.seq}`), el("span", { class: "muted" }, when(e.at)),
      el("span", {}, `v${e.version}`), badge(e.status), el("span", {}, `cause ${e.cause}`),
      e.policies && e.policies.length ? el("span", { class: "muted" }, policyRefs(e.policies)) : null),
    e.error ? el("div", { class: "error" }, typeof e.error === "string" ? e.error : json(e.error)) : null,
    e.delta && Object.keys(e.delta).length ? el("pre", { "data-testid": "timeline-delta" }, json(e.delta)) : null);
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
      const body = await api(`/v1/sessions/${encodeURIComponent(canonical || id)}/config-at?at=${encodeURIComponent(at.value.trim())}`);
      result.replaceChildren(el("div", { class: "panel" },
        el("p", {}, "verified ", el("span", { "data-testid": "config-at-verified", "data-verified": String(body.verified) },
          badge(body.verified ? "acked" : "rejected"), " ", String(body.verified)),
        body.established_by ? ` · established by entry #${body.established_by.seq ?? "?"}` : "",
        body.policies ? ` · ${policyRefs(body.policies)}` : ""),
        el("pre", { "data-testid": "config-at-config" }, json(body.config)),
        body.notes && body.notes.length ? el("p", { class: "muted" }, body.notes.join(" ")) : null));
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
