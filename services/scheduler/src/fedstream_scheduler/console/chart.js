// A line chart drawn as SVG: one metric across a run's rounds (or versions).

import { fmtNumber, svg } from "./dom.js";

const W = 360;
const H = 190;
const M = { left: 52, right: 12, top: 26, bottom: 30 };

/** About ``count`` round numbers spanning [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (lo === hi) return [lo];
  const raw = (hi - lo) / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + nice * 1e-9; v += nice) out.push(Number(v.toPrecision(12)));
  return out;
}

/** ``points``: [{x, y, label}] sorted by x. */
export function lineChart(title, points, { xLabel = "round" } = {}) {
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const px = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
  const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  const xTicks = ticks(x0, x1).filter((t) => Number.isInteger(t));
  const yTicks = ticks(y0, y1);
  return svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title} by ${xLabel}`, "data-metric": title },
    svg("text", { x: M.left, y: 16, class: "chart-title" }, title),
    svg("line", { x1: M.left, y1: H - M.bottom, x2: W - M.right, y2: H - M.bottom, class: "axis" }),
    svg("line", { x1: M.left, y1: M.top, x2: M.left, y2: H - M.bottom, class: "axis" }),
    yTicks.map((t) => [
      svg("line", { x1: M.left, y1: py(t), x2: W - M.right, y2: py(t), class: "grid-line" }),
      svg("text", { x: M.left - 6, y: py(t) + 4, class: "tick tick-y" }, fmtNumber(t)),
    ]),
    xTicks.map((t) => svg("text", { x: px(t), y: H - M.bottom + 16, class: "tick tick-x" }, String(t))),
    svg("text", { x: W - M.right, y: H - 4, class: "tick axis-label" }, xLabel),
    svg("polyline", { class: "line", points: points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ") }),
    points.map((p) => svg("circle", { class: "dot", cx: px(p.x).toFixed(1), cy: py(p.y).toFixed(1), r: 3 },
      svg("title", {}, `${p.label ?? `${xLabel} ${p.x}`}: ${fmtNumber(p.y)}`))));
}

/** One series per metric name across rounds: {name: [{x: round, y, label}]}. */
export function metricSeries(rounds) {
  const series = {};
  for (const r of rounds) {
    if (r.state !== "committed") continue;
    for (const [name, value] of Object.entries({ ...r.update_metrics, ...r.metrics })) {
      if (typeof value !== "number" || !Number.isFinite(value)) continue;
      const key = r.kind === "evaluate" ? `${name} (evaluation)` : name;
      (series[key] ||= []).push({ x: r.round, y: value, label: `round ${r.round}${r.version ? ` (${r.version})` : ""}` });
    }
  }
  return series;
}
