// Builds the page from data without ever parsing data as HTML: every value lands as a text node
// or as an attribute set one by one; no markup is ever parsed, and no inline script or style is
// made (the CSP forbids both).

const SVG_NS = "http://www.w3.org/2000/svg";

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${key} must be a function`);
      el.addEventListener(key.slice(2), value);
    } else if (key === "hidden") {
      el.hidden = true;
    } else if (key === "href" && !/^#|^\/(?![/\\])|^blob:/.test(String(value))) {
      // Only the console's own pages: "//host" and "/\host" lead to another site.
      throw new TypeError(`refusing link ${value}: only the console's own pages`);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, text, child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  return append(el, children);
}

/** An SVG element, as h. */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  return append(el, children);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A link to one of the console's pages; each path segment is URI-encoded. */
export function link(segments, text, query) {
  let href = "#/" + segments.map((x) => encodeURIComponent(String(x))).join("/");
  if (query) href += "?" + new URLSearchParams(query).toString();
  return h("a", { href }, text);
}

/** A version RUN/NNNNNN as a link to its page. */
export function versionLink(version) {
  if (!version) return h("span", { class: "muted" }, "—");
  const [run, number] = version.split("/");
  return link(["model", run, number], version);
}

export function pad(n) {
  return String(n).padStart(2, "0");
}

export function fmtTime(unix) {
  if (!unix) return "—";
  const d = new Date(unix * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtAgo(unix, now = Date.now() / 1000) {
  if (!unix) return "never";
  const s = Math.round(now - unix);
  const word = s < 0 ? "in " : "";
  const a = Math.abs(s);
  const text = a < 90 ? `${a} s` : a < 5400 ? `${Math.round(a / 60)} min` : a < 172800 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
  return s < 0 ? word + text : text + " ago";
}

export function fmtDuration(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function fmtBytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtNumber(x) {
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a >= 1e6 || (a < 0.001 && a > 0)) return x.toExponential(3);
  return a >= 1000 ? x.toFixed(0) : String(Number(x.toPrecision(4))); // 0.8, not 0.8000
}

/** A table: columns [{title, cell(item) -> node|text, class}], one row per item. */
export function table(columns, items, { empty = "Nothing yet.", rowAttrs } = {}) {
  if (!items.length) return h("p", { class: "muted empty" }, empty);
  return h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.title)))),
    h("tbody", {}, items.map((item) => h("tr", rowAttrs ? rowAttrs(item) : {},
      columns.map((c) => h("td", { class: c.class }, c.cell(item)))))));
}

/** key=value pairs (metrics, labels) as small tags. */
export function pairs(obj, format = (v) => v) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("span", { class: "muted" }, "—");
  return h("span", { class: "pairs" }, entries.map(([k, v]) => h("span", { class: "pair" }, `${k}=${format(v)}`)));
}

export function badge(word) {
  return h("span", { class: `badge badge-${String(word).replace(/[^a-z_]/g, "")}` }, word);
}

/** A section with a title, holding children (a panel of a page). */
export function panel(title, ...children) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...children);
}
