// The console's shell: token, REST calls, router and the live refresh (docs/console.md).
// Pages are modules exporting `mount(main, params)` -> {refresh(): Promise<void>}; the shell
// calls refresh() about once a second (never two at once) while the page is shown; refresh()
// may answer "stream" when the page follows a server-sent event stream (then it polls nothing),
// and stop() (optional) is called when the page goes.
import { el, ApiError } from "./dom.js";

const TOKEN_KEY = "controlplane.token";
const POLL_MS = 1000;
const PAGES = [
  [/^\/ui\/?$/, "overview.js", () => ({})],
  [/^\/ui\/policies\/([^/]+)$/, "policy.js", (m) => ({ id: decodeURIComponent(m[1]) })],
  [/^\/ui\/sessions\/([^/]+)$/, "session.js", (m) => ({ id: decodeURIComponent(m[1]) })],
  [/^\/ui\/experiments\/([^/]+)$/, "experiment.js", (m) => ({ key: decodeURIComponent(m[1]) })],
];

let current = null; // {page, timer, busy, generation}
let generation = 0;

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export async function api(path) {
  const resp = await fetch(path, {
    headers: { Authorization: `Bearer ${token()}`, Accept: "application/json" },
    cache: "no-store",
  });
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!resp.ok) {
    const err = body && body.error ? body.error : {};
    throw new ApiError(resp.status, err.code || String(resp.status), err.message || text.slice(0, 200));
  }
  return body;
}

/** Read a server-sent event stream with the token in the Authorization header (fetch, not
 * EventSource: no token in the URL); calls `onEvent(name, data)` per event until the stream
 * ends (resolves) or fails (throws ApiError on a refusal). `signal` aborts it. */
export async function stream(path, onEvent, signal) {
  const resp = await fetch(path, {
    headers: { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" },
    cache: "no-store", signal,
  });
  if (!resp.ok || !resp.body) throw new ApiError(resp.status, String(resp.status), "stream refused");
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) await onEvent(name, JSON.parse(data));
    }
  }
}

/** Every item of a paginated list (`{items, next}`), following `next` up to `maxPages`;
 *  `items.truncated` is true when more pages remained (a page must then say so). */
export async function apiAll(path, maxPages = 20) {
  const items = [];
  items.truncated = false;
  let cursor = null;
  for (let n = 0; n < maxPages; n++) {
    const sep = path.includes("?") ? "&" : "?";
    const body = await api(cursor === null ? path : `${path}${sep}cursor=${encodeURIComponent(cursor)}`);
    items.push(...body.items);
    if (body.next === null || body.next === undefined) return items;
    cursor = body.next;
  }
  items.truncated = true;
  return items;
}

function takeFragment() {
  const hash = location.hash.slice(1);
  if (hash === "signout") {
    sessionStorage.removeItem(TOKEN_KEY);
  } else if (hash.startsWith("token=")) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(hash.slice("token=".length)));
  } else {
    return;
  }
  // never leave the token in the address bar (history, screenshots, shoulder surfing)
  history.replaceState(null, "", location.pathname + location.search);
}

function stop() {
  generation += 1;
  if (current && current.timer) clearTimeout(current.timer);
  if (current && current.page.stop) current.page.stop();
  current = null;
}

function login(main, message) {
  stop();
  document.querySelector("[data-testid=sign-out]").hidden = true;
  const input = el("input", { type: "password", name: "token", autocomplete: "off",
    "data-testid": "login-token", placeholder: "API token", size: 40, required: true });
  const form = el("form", { class: "login panel", "data-testid": "login-form" },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "Paste an API token (kept in this tab's session storage only)."),
    message ? el("p", { class: "error", "data-testid": "login-error" }, message) : null,
    el("p", {}, input, " ", el("button", { type: "submit", "data-testid": "login-submit" }, "Sign in")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    route();
  });
  main.replaceChildren(form);
  input.focus();
}

function setLive(text, isError, source) {
  const live = document.querySelector("[data-testid=live-status]");
  live.textContent = text;
  live.dataset.source = source || ""; // "stream" (server-sent events) or "poll"
  live.classList.toggle("error", Boolean(isError));
}

async function tick(state) {
  if (state.generation !== generation) return;
  try {
    const source = (await state.page.refresh()) || "poll";
    setLive(`live (${source}) · updated ${new Date().toLocaleTimeString()}`, false, source);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      login(document.getElementById("main"), "That token was not accepted (401). Sign in again.");
      return;
    }
    setLive(`refresh failed: ${err.message}`, true);
  }
  if (state.generation === generation) state.timer = setTimeout(() => tick(state), POLL_MS);
}

export async function route() {
  takeFragment();
  const main = document.getElementById("main");
  stop();
  if (!token()) {
    login(main, null);
    return;
  }
  document.querySelector("[data-testid=sign-out]").hidden = false;
  for (const [pattern, module, params] of PAGES) {
    const match = location.pathname.match(pattern);
    if (!match) continue;
    const mine = generation;
    const mod = await import(`./${module}`);
    if (mine !== generation) return;
    main.replaceChildren();
    const page = mod.mount(main, params(match));
    current = { page, timer: null, generation: mine };
    await tick(current);
    return;
  }
  main.replaceChildren(el("p", { class: "error" }, `No console page at ${location.pathname}.`));
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[href]");
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui/")) return;
  ev.preventDefault();
  history.pushState(null, "", url.pathname + url.search + url.hash);
  route();
});
window.addEventListener("popstate", () => route());
window.addEventListener("hashchange", () => route());
route();
