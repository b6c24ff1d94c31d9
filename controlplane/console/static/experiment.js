// /ui/experiments/{key}: exposures per variant against the declared weights and the
// sample-ratio-mismatch verdict of GET /v1/experiments/{key} (docs/experiments.md).
import { api } from "./app.js";
import { badge, el, section } from "./dom.js";

const pct = (share) => (share === null || share === undefined ? "—" : `${(100 * share).toFixed(1)} %`);

export function mount(main, { key }) {
  const head = el("div");
  const verdict = el("div");
  const variants = el("div");
  main.append(head, verdict, section("Variants", variants));
  return {
    async refresh() {
      const s = await api(`/v1/experiments/${encodeURIComponent(key)}`);
      head.replaceChildren(el("h1", {}, "Experiment ", el("span", { class: "mono" }, s.experiment),
        " ", el("span", { class: "muted" }, `iteration ${s.iteration} · policy `),
        el("a", { href: `/ui/policies/${encodeURIComponent(s.policy)}` }, `${s.policy} v${s.version}`),
        el("span", { class: "muted" }, ` · ${s.exposed} exposed · bucket by ${s.bucket_by}`)));
      const srm = s.srm || {};
      const state = srm.mismatch ? "mismatch" : srm.p_value === null || srm.p_value === undefined ? "no data" : "ok";
      verdict.replaceChildren(el("div", { class: "panel" },
        el("span", { "data-testid": "srm-verdict", "data-mismatch": String(Boolean(srm.mismatch)) },
          badge(srm.mismatch ? "rejected" : "acked"), " ",
          srm.mismatch ? "Sample ratio mismatch" : "No sample ratio mismatch detected"),
        el("span", { class: "muted" }, ` · ${srm.test || "chi-squared"} p = ${srm.p_value ?? "—"}`
          + ` (threshold ${srm.threshold ?? "—"}, needs ${srm.min_exposures ?? "—"} exposures) · ${state}`)));
      variants.replaceChildren(el("table", {},
        el("tr", {}, ["variant", "weight", "expected", "exposed", "share", ""].map((h) => el("th", {}, h))),
        (s.variants || []).map((v) => el("tr", { "data-testid": "variant-share", "data-variant": v.name,
          "data-exposed": v.exposed, "data-share": v.exposed_share ?? "" },
          el("td", {}, v.name), el("td", { class: "num" }, v.weight), el("td", { class: "num" }, pct(v.expected_share)),
          el("td", { class: "num" }, v.exposed), el("td", { class: "num" }, pct(v.exposed_share)),
          el("td", {}, el("div", { class: "bar" }, el("span", { class: "s-acknowledged",
            style: `width:${100 * (v.exposed_share || 0)}%` })))))));
    },
  };
}
