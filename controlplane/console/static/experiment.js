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
      head.replaceChildren(el("h1", {}, "Experiment ", el("span", { class: "mono" }, s.experiment)),
        el("p", { class: "muted" }, `iteration ${s.iteration} · policy `,
          el("a", { href: `/ui/policies/${encodeURIComponent(s.policy)}` }, `${s.policy} v${s.version}`),
          ` · ${s.exposed} exposed · bucketed by ${s.bucket_by}`));
      const srm = s.srm || {};
      // a verdict needs volume: below min_exposures the check declares no mismatch (experiments.md)
      const enough = srm.min_exposures === undefined || s.exposed >= srm.min_exposures;
      const [word, tone, text] = srm.mismatch
        ? ["mismatch", "rejected", "Sample ratio mismatch: the exposed split does not match the weights"]
        : enough
          ? ["ok", "acked", "No sample ratio mismatch"]
          : ["too few", "pending", `Too few exposures for a verdict (${s.exposed} of ${srm.min_exposures})`];
      const p = typeof srm.p_value === "number" ? srm.p_value.toPrecision(3) : "—";
      verdict.replaceChildren(el("div", { class: "panel" },
        el("span", { "data-testid": "srm-verdict", "data-mismatch": String(Boolean(srm.mismatch)),
          "data-verdict": word }, badge(word, tone), " ", text),
        el("span", { class: "muted" }, ` · ${srm.test || "chi-squared"} p = ${p}`
          + ` (threshold ${srm.threshold ?? "—"})`)));
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
