// DOM helpers shared by the pages: elements built from data (never innerHTML), formatting.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

/** el("td", {class: "num", "data-testid": "x"}, child, "text", null) */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "style") { // the CSP allows no style attribute: CSSOM only
      node.style.cssText = value;
      continue;
    }
    node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

export function short(value, n = 12) {
  return typeof value === "string" && value.length > n ? value.slice(0, n) + "…" : value;
}

export function badge(text, tone = text) {
  return el("span", { class: `badge ${tone}` }, text);
}

export function section(title, ...children) {
  return el("section", {}, el("h2", {}, title), ...children);
}

/** A stacked bar of counts: [[name, count], ...] over `total`. */
export function bar(parts, total, testid) {
  return el("div", { class: "bar", "data-testid": testid, title: parts.map(([n, c]) => `${n} ${c}`).join(", ") },
    parts.filter(([, c]) => c > 0).map(([name, c]) =>
      el("span", { class: `s-${name}`, style: `width:${total ? (100 * c) / total : 0}%` })));
}

/** An instant as UTC text: RFC 3339 strings, or Unix seconds (log entries' `at`). */
export function when(iso) {
  if (iso === null || iso === undefined || iso === "") return "";
  const d = new Date(typeof iso === "number" ? iso * 1000 : iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** Dotted-path diff of two policy documents (as controlplane/policy_history.py): version left out. */
export function diffDocuments(a, b) {
  const flat = (doc, prefix, out) => {
    for (const [key, value] of Object.entries(doc || {})) {
      const path = prefix + key;
      if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
        flat(value, path + ".", out);
      } else {
        out.set(path, value);
      }
    }
    return out;
  };
  const left = flat(a, "", new Map());
  const right = flat(b, "", new Map());
  left.delete("version");
  right.delete("version");
  const paths = [...new Set([...left.keys(), ...right.keys()])].sort();
  return paths
    .filter((p) => JSON.stringify(left.get(p)) !== JSON.stringify(right.get(p)))
    .map((p) => ({ path: p, from: left.get(p), to: right.get(p) }));
}
