// /ui/experiments/{key}: exposures per variant against the declared weights and the
// sample-ratio-mismatch verdict of GET /v1/experiments/{key} (docs/experiments.md).
import { api } from "./app.js";
import { badge, el, section, when } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs, ...children) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  node.append(...children);
  return node;
};

/** Cumulative counted exposures per variant over time, from GET /v1/experiments/{key}/timeline
 *  (aggregated by the server: the summary's counts in time bins, at any experiment size): an
 *  inline SVG step chart plus a table with the same figures. */
function exposuresOverTime(t) {
  const names = (t.variants || []).map((v) => v.name);
  const series = new Map(names.map((n) => [n, []]));
  for (const b of t.bins || []) {
    const at = Date.parse(b.at);
    if (Number.isNaN(at) || !series.has(b.variant)) continue;
    series.get(b.variant).push([at, b.cumulative]);
  }
  const binMs = 1000 * (t.bin_s || 60);
  const starts = [...series.values()].flat().map(([at]) => at);
  const t0 = starts.length ? Math.min(...starts) : 0;
  const t1 = starts.length ? Math.max(...starts) + binMs : 1;
  const top = Math.max(1, ...(t.variants || []).map((v) => v.binned));
  const W = 480, H = 120;
  const x = (at) => (t1 > t0 ? ((at - t0) / (t1 - t0)) * W : W);
  const y = (n) => H - (n / top) * H;
  const chart = svg("svg", { viewBox: `0 -4 ${W} ${H + 8}`, width: W, height: H + 8, class: "chart",
    role: "img", "aria-label": "cumulative exposures per variant" });
  const palette = ["#2f9e6b", "#6b8fe8", "#e0a33b", "#c8504b", "#8a63d2", "#3aa7b8"];
  let i = 0;
  for (const [name, points] of series) {
    let d = `M0 ${y(0)}`;
    // a bin's exposures are reached by its end (step at the bin's end: never early)
    for (const [at, n] of points) d += ` H${x(at + binMs).toFixed(1)} V${y(n).toFixed(1)}`;
    d += ` H${W}`;
    const line = svg("path", { d, fill: "none", "stroke-width": 2, "data-variant": name });
    line.style.stroke = palette[i++ % palette.length]; // CSSOM: the CSP allows no style attribute
    chart.append(line);
  }
  const short = (t.binned ?? 0) < (t.exposed ?? 0);
  const minutes = (t.bin_s || 60) / 60;
  return el("div", { "data-testid": "exposures-over-time", "data-exposed": t.exposed,
    "data-binned": t.binned, "data-bin-s": t.bin_s }, chart,
    el("p", { class: "muted", "data-testid": "exposures-over-time-note" },
      `${t.exposed} counted exposure(s) (one per call) in ${minutes}-minute bins`
      + (short ? `; the chart holds ${t.binned} of them: ${t.exposed - t.binned} were counted before time bins were kept` : "")),
    el("table", {}, el("tr", {}, ["variant", "exposed", "first bin", "until"].map((h) => el("th", {}, h))),
      (t.variants || []).map((v, k) => el("tr", { "data-testid": "exposure-series", "data-variant": v.name,
        "data-count": v.exposed, "data-binned": v.binned },
        el("td", {}, el("span", { class: "swatch", style: `background:${palette[k % palette.length]}` }), " ", v.name),
        el("td", { class: "num" }, v.exposed),
        el("td", {}, v.first ? when(v.first) : "—"),
        el("td", {}, v.latest ? when(v.latest) : "—")))));
}

const pct = (share) => (share === null || share === undefined ? "—" : `${(100 * share).toFixed(1)} %`);

export function mount(main, { key }) {
  const head = el("div");
  const verdict = el("div");
  const variants = el("div");
  const over = el("div");
  main.append(head, verdict, section("Variants", variants), section("Exposures over time", over));
  let charted = null; // [exposed, when] of the chart shown: re-read when the count moves, or each 30 s
  return {
    async refresh() {
      const s = await api(`/v1/experiments/${encodeURIComponent(key)}`);
      head.replaceChildren(el("h1", {}, "Experiment ", el("span", { class: "mono" }, s.experiment)),
        el("p", { class: "muted" }, `iteration ${s.iteration} · policy `,
          el("a", { href: `/ui/policies/${encodeURIComponent(s.policy)}` }, `${s.policy} v${s.version}`),
          ` · ${s.exposed} exposed (calls) · bucketed by ${s.bucket_by}`));
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
          el("td", {}, v.name, v.removed ? el("span", { class: "muted", "data-testid": "variant-removed" },
            " (no longer declared: weight 0)") : null), el("td", { class: "num" }, v.weight), el("td", { class: "num" }, pct(v.expected_share)),
          el("td", { class: "num" }, v.exposed), el("td", { class: "num" }, pct(v.exposed_share)),
          el("td", {}, el("div", { class: "bar" }, el("span", { class: "s-acknowledged",
            style: `width:${100 * (v.exposed_share || 0)}%` })))))));
      if (!charted || charted[0] !== s.exposed || Date.now() - charted[1] > 30_000) {
        const t = await api(`/v1/experiments/${encodeURIComponent(key)}/timeline`);
        over.replaceChildren(exposuresOverTime(t));
        charted = [s.exposed, Date.now()];
      }
    },
  };
}
