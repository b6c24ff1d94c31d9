// /ui/policies/{id}: the current version's live rollout, rows per version and variant, guard
// state and halt, versions (actor, time, reason) and a diff between any two versions.
import { api, apiAll, stream } from "./app.js";
import { badge, bar, diffDocuments, el, json, section, short, when } from "./dom.js";

// every row's `targeted` is the sum of these (docs/api.md, GET /v1/policies/{id}/rollout)
export const COLUMNS = [
  ["unchanged", "unchanged", "rollout-unchanged"],
  ["sent", "sent", "rollout-sent"],
  ["acknowledged", "acked", "rollout-acked"],
  ["unverified", "unverified", "rollout-unverified"],
  ["rejected", "rejected", "rollout-rejected"],
  ["pending", "pending", "rollout-pending"],
];
// final and not failed: what "rolled out" means in the progress figure; `in_doubt` (the part
// of `unverified` no answer confirmed on a dialect that acknowledges) is not rolled out
const SETTLED = ["acknowledged", "unverified", "unchanged"];

export function settledPercent(row) {
  if (!row.targeted) return null;
  const settled = SETTLED.reduce((s, k) => s + row[k], 0) - (row.in_doubt || 0);
  return Math.floor((100 * settled) / row.targeted);
}

export function rolloutBar(row, testid) {
  return bar(COLUMNS.map(([key]) => [key, row[key]]), row.targeted, testid);
}

function sumRows(rows) {
  const total = { targeted: 0, guard_failures: 0, in_doubt: 0 };
  for (const [key] of COLUMNS) total[key] = 0;
  for (const row of rows) for (const key of Object.keys(total)) total[key] += row[key] || 0;
  return total;
}

function figure(label, value, testid, extra = {}) {
  return el("div", { class: "figure" }, el("div", { class: "label" }, label),
    el("div", { class: "value", "data-testid": testid, ...extra }, value));
}

export function mount(main, { id }) {
  const parts = {
    head: el("div"), figures: el("div", { class: "figures" }), rows: el("div"), guard: el("div"),
    versions: el("div"), diff: el("div"),
  };
  main.append(parts.head, parts.figures, section("Rollout per version and variant", parts.rows),
    section("Guard", parts.guard), section("Versions", parts.versions),
    section("Diff", parts.diff));
  let records = [];
  let seen = null; // "version/status" the versions were last read at
  // the two versions compared: the URL's (?a=&b=) or the user's choice, else the latest two
  const params = new URLSearchParams(location.search);
  const pick = { a: null, b: null, chosen: params.has("a") && params.has("b") };
  if (pick.chosen) {
    pick.a = Number(params.get("a"));
    pick.b = Number(params.get("b"));
  }

  function renderDiff() {
    const options = (chosen) => records.map((r) =>
      el("option", { value: r.version, selected: r.version === chosen }, `v${r.version} · ${r.action}`));
    if (!records.length) return parts.diff.replaceChildren(el("p", { class: "muted" }, "No versions."));
    const last = records[records.length - 1].version;
    const known = (v) => records.some((r) => r.version === v);
    if (!pick.chosen || !known(pick.b)) pick.b = last;
    if (!pick.chosen || !known(pick.a)) pick.a = records.length > 1 ? records[records.length - 2].version : last;
    const selA = el("select", { "data-testid": "diff-from", "aria-label": "from version" }, options(pick.a));
    const selB = el("select", { "data-testid": "diff-to", "aria-label": "to version" }, options(pick.b));
    const onChange = () => {
      pick.a = Number(selA.value);
      pick.b = Number(selB.value);
      pick.chosen = true;
      history.replaceState(null, "", `${location.pathname}?a=${pick.a}&b=${pick.b}`);
      renderDiff();
    };
    selA.addEventListener("change", onChange);
    selB.addEventListener("change", onChange);
    const doc = (v) => records.find((r) => r.version === v).policy;
    const changes = diffDocuments(doc(pick.a), doc(pick.b));
    const table = changes.length
      ? el("table", { class: "diff", "data-testid": "diff-table" },
        el("tr", {}, el("th", {}, "field"), el("th", {}, `v${pick.a}`), el("th", {}, `v${pick.b}`)),
        changes.map((c) => el("tr", { "data-testid": "diff-row", "data-path": c.path },
          el("td", { class: "mono" }, c.path),
          el("td", { class: "from" }, el("pre", {}, c.from === undefined ? "—" : json(c.from))),
          el("td", { class: "to" }, el("pre", {}, c.to === undefined ? "—" : json(c.to))))))
      : el("p", { class: "muted", "data-testid": "diff-empty" }, "The two documents are identical.");
    parts.diff.replaceChildren(el("p", {}, "from ", selA, " to ", selB), table);
  }

  function renderVersions() {
    parts.versions.replaceChildren(el("table", { "data-testid": "versions" },
      el("tr", {}, ["version", "action", "at", "actor", "role", "reason", "digest"].map((h) => el("th", {}, h))),
      [...records].reverse().map((r) => el("tr", { "data-testid": "version-row", "data-version": r.version },
        el("td", {}, `v${r.version}`), el("td", {}, badge(r.action)), el("td", {}, when(r.at)),
        el("td", { class: "mono" }, r.actor), el("td", {}, r.role),
        el("td", { "data-testid": "version-reason" }, r.reason || el("span", { class: "muted" }, "—")),
        el("td", { class: "mono", title: r.digest }, short(r.digest))))));
  }

  function renderRollout(body) {
    const current = sumRows(body.versions.filter((r) => r.version === body.version));
    const pct = settledPercent(current);
    parts.head.replaceChildren(el("h1", {}, "Policy ", el("span", { class: "mono" }, id), " ",
      el("span", { class: "muted" }, "v"), el("span", { "data-testid": "policy-version" }, body.version), " ",
      el("span", { "data-testid": "policy-state" }, badge(body.state || body.status))));
    parts.figures.replaceChildren(
      figure("rolled out", pct === null ? "—" : `${pct} %`, "rollout-percent",
        { "data-percent": pct === null ? "" : pct }),
      figure("targeted", current.targeted, "rollout-targeted"),
      ...COLUMNS.map(([key, label, testid]) => figure(label, current[key], testid)),
      figure("in doubt (of unverified)", current.in_doubt, "rollout-in-doubt"),
      figure("guard failures", current.guard_failures, "rollout-guard-failures"),
      el("div", { class: "figure", style: "flex:1" }, el("div", { class: "label" },
        `v${body.version} · ${current.targeted} live sessions targeted`), rolloutBar(current, "rollout-bar")));
    parts.rows.replaceChildren(body.versions.length
      ? el("table", { "data-testid": "rollout-rows" },
        el("tr", {}, el("th", {}, "version"), el("th", {}, "variant"), el("th", { class: "num" }, "targeted"),
          COLUMNS.map(([, label]) => el("th", { class: "num" }, label)), el("th", { class: "num" }, "guard failures"),
          el("th", {}, "")),
        body.versions.map((r) => el("tr", { "data-testid": "rollout-row", "data-version": r.version,
          "data-variant": r.variant ?? "" },
          el("td", {}, `v${r.version}`), el("td", {}, r.variant ?? "—"), el("td", { class: "num" }, r.targeted),
          COLUMNS.map(([key]) => el("td", { class: "num", "data-col": key }, r[key])),
          el("td", { class: "num" }, r.guard_failures), el("td", {}, rolloutBar(r, null)))))
      : el("p", { class: "muted" }, "No live session runs this policy."));
    const halt = body.halt;
    const waves = body.waves;
    parts.guard.replaceChildren(el("div", { class: "panel" },
      el("p", {}, "state ", badge(body.state || body.status), " · guard ",
        body.guard && body.guard.enabled
          ? `on: halt above ${body.guard.max_failure_ratio} failures over ${body.guard.window_s} s `
            + `(at least ${body.guard.min_sessions} sessions), then ${body.guard.on_breach}`
          : "off"),
      halt ? el("p", { class: "error", "data-testid": "halt-reason" },
        `v${halt.version} halted ${when(halt.at)} by ${halt.actor}: ${halt.reason}`
          + (halt.failed !== undefined ? ` (${halt.failed} of ${halt.targeted} failed)` : "")
          + (halt.rollback_to ? `, rolled back to v${halt.rollback_to}` : "")) : null,
      waves ? el("p", { "data-testid": "waves" }, `waves ${waves.waves.join(" → ")} %: wave ${waves.index + 1} `
        + `at ${waves.percent} %, ${waves.state}`) : null));
  }

  async function show(body) {
    const mark = `${body.version}/${body.status}/${body.state}`;
    if (mark !== seen) {
      records = await apiAll(`/v1/policies/${encodeURIComponent(id)}/versions?limit=100`);
      seen = mark;
      renderVersions();
      renderDiff();
    }
    renderRollout(body);
  }

  // the rollout follows GET .../rollout/stream (server-sent events); while it is not up, the
  // shell's once-a-second refresh() polls instead, and the stream is retried every 5 s
  const live = { on: false, stopped: false, abort: null, retry: null };
  async function follow() {
    live.abort = new AbortController();
    try {
      await stream(`/v1/policies/${encodeURIComponent(id)}/rollout/stream`, async (name, body) => {
        if (name !== "rollout") return;
        await show(body);
        live.on = true;
      }, live.abort.signal);
    } catch {
      // refused or broken: polling takes over (a 401 sends the poll to the sign-in form)
    }
    live.on = false;
    if (!live.stopped) live.retry = setTimeout(follow, 5000);
  }
  follow();

  return {
    async refresh() {
      if (live.on) return "stream";
      await show(await api(`/v1/policies/${encodeURIComponent(id)}/rollout`));
      return "poll";
    },
    stop() {
      live.stopped = true;
      clearTimeout(live.retry);
      if (live.abort) live.abort.abort();
    },
  };
}
