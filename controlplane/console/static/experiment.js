// /ui/experiments/{key}: exposures per variant against the declared weights and the
// sample-ratio-mismatch verdict of GET /v1/experiments/{key} (docs/experiments.md).
import { api, apiAll } from "./app.js";
import { badge, el, section, when } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs, ...children) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
};

/** Cumulative exposures per variant over time (this iteration's rows of the assignments
 *  export): an inline SVG step chart plus a table with the same figures. */
function exposuresOverTime(rows, names) {
  const series = new Map(names.map((n) => [n, []]));
  for (const r of rows) {
    if (!r.exposed_at) continue;
    const t = Date.parse(r.exposed_at);
    if (Number.isNaN(t)) continue;
    if (!series.has(r.variant)) series.set(r.variant, []);
    series.get(r.variant).push(t);
  }
  const times = [...series.values()].flat();
  const t0 = times.length ? Math.min(...times) : 0;
  const t1 = times.length ? Math.max(...times) : 1;
  const top = Math.max(1, ...[...series.values()].map((ts) => ts.length));
  const W = 480, H = 120;
  const x = (t) => (t1 > t0 ? ((t - t0) / (t1 - t0)) * W : W);
  const y = (n) => H - (n / top) * H;
  const chart = svg("svg", { viewBox: `0 -4 ${W} ${H + 8}`, width: W, height: H + 8, class: "chart",
    role: "img", "aria-label": "cumulative exposures per variant" });
  const palette = ["#2f9e6b", "#6b8fe8", "#e0a33b", "#c8504b", "#8a63d2", "#3aa7b8"];
  let i = 0;
  for (const [name, ts] of series) {
    ts.sort((a, b) => a - b);
    let d = `M0 ${y(0)}`;
    ts.forEach((t, n) => { d += ` H${x(t).toFixed(1)} V${y(n + 1).toFixed(1)}`; });
    d += ` H${W}`;
    const line = svg("path", { d, fill: "none", "stroke-width": 2, "data-variant": name });
    line.style.stroke = palette[i++ % palette.length]; // CSSOM: the CSP allows no style attribute
    chart.append(line);
  }
  const list = [...series.entries()];
  return el("div", { "data-testid": "exposures-over-time" }, chart,
    el("table", {}, el("tr", {}, ["variant", "exposed", "first", "latest"].map((h) => el("th", {}, h))),
      list.map(([name, ts], k) => el("tr", { "data-testid": "exposure-series", "data-variant": name,
        "data-count": ts.length },
        el("td", {}, el("span", { class: "swatch", style: `background:${palette[k % palette.length]}` }), " ", name),
        el("td", { class: "num" }, ts.length),
        el("td", {}, ts.length ? when(new Date(ts[0]).toISOString()) : "—"),
        el("td", {}, ts.length ? when(new Date(ts[ts.length - 1]).toISOString()) : "—")))));
}

const pct = (share) => (share === null || share === undefined ? "—" : `${(100 * share).toFixed(1)} %`);

export function mount(main, { key }) {
  const head = el("div");
  const verdict = el("div");
  const variants = el("div");
  const over = el("div");
  main.append(head, verdict, section("Variants", variants), section("Exposures over time", over));
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
      const rows = await apiAll(`/v1/experiments/${encodeURIComponent(key)}/assignments?limit=1000`, 20);
      over.replaceChildren(exposuresOverTime(rows.filter((r) => r.iteration === undefined || Number(r.iteration) === Number(s.iteration)),
        (s.variants || []).map((v) => v.name)));
    },
  };
}
