// A version's lineage graph drawn as SVG: versions in columns by generation (parents left of
// their children), an arrow per parent -> child edge, each version a link to its page.

import { svg } from "./dom.js";

const ROW = 46;
const BOX_H = 30;
const CHAR_W = 7.4; // the monospace label's advance at 12px

/** Column of each node: its longest distance from a root, over the edges among these nodes. */
export function layers(nodes, edges) {
  const ids = new Set(nodes.map((n) => n.version));
  const parents = new Map(nodes.map((n) => [n.version, []]));
  for (const e of edges) if (ids.has(e.parent) && ids.has(e.child)) parents.get(e.child).push(e.parent);
  const depth = new Map();
  const visit = (v, seen) => {
    if (depth.has(v)) return depth.get(v);
    if (seen.has(v)) return 0; // a cycle (never written by fedstream): cut it
    seen.add(v);
    const d = Math.max(-1, ...parents.get(v).map((p) => visit(p, seen))) + 1;
    depth.set(v, d);
    return d;
  };
  for (const n of nodes) visit(n.version, new Set());
  return depth;
}

export function lineageGraph(graph, current) {
  const nodes = graph.nodes || [];
  const edges = graph.edges || [];
  const depth = layers(nodes, edges);
  const BOX = { w: Math.max(120, 16 + CHAR_W * Math.max(0, ...nodes.map((n) => n.version.length))), h: BOX_H };
  const COL = BOX.w + 36;
  const columns = new Map();
  for (const n of [...nodes].sort((a, b) => a.version.localeCompare(b.version))) {
    const d = depth.get(n.version);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(n);
  }
  const at = new Map();
  for (const [d, col] of columns) col.forEach((n, i) => at.set(n.version, { x: 10 + d * COL, y: 10 + i * ROW }));
  const width = 20 + Math.max(0, ...[...columns.keys()]) * COL + BOX.w;
  const height = 20 + Math.max(1, ...[...columns.values()].map((c) => c.length)) * ROW;
  return svg("svg", { class: "lineage-graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "lineage graph" },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow-head" }))),
    edges.filter((e) => at.has(e.parent) && at.has(e.child)).map((e) => {
      const a = at.get(e.parent);
      const b = at.get(e.child);
      const [x1, y1, x2, y2] = [a.x + BOX.w, a.y + BOX.h / 2, b.x, b.y + BOX.h / 2];
      return svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + 20},${y1} ${x2 - 20},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" });
    }),
    nodes.map((n) => {
      const p = at.get(n.version);
      const [run, number] = n.version.split("/");
      return svg("a", { href: `#/model/${encodeURIComponent(run)}/${encodeURIComponent(number)}`, class: "node-link", "data-version": n.version },
        svg("rect", { x: p.x, y: p.y, width: BOX.w, height: BOX.h, rx: 5,
          class: `node${n.version === current ? " current" : ""}${n.missing ? " missing" : ""}` }),
        svg("text", { x: p.x + 8, y: p.y + 19, class: "node-label" }, n.version),
        svg("title", {}, n.missing ? `${n.version}: its lineage is gone (deleted by retention, or older than lineages)`
          : [n.version, n.kind, n.federation_id, n.participants !== undefined ? `${n.participants} sites, ${n.examples} examples` : "",
            n.committed_unix ? new Date(n.committed_unix * 1000).toISOString() : ""].filter(Boolean).join(" · ")));
    }));
}
