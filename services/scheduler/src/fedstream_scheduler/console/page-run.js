// One run: its progress, live while it runs (polled every 2 s, no reload), each round's
// participants, stragglers, duration, bytes and metrics (and under differential privacy the
// federation's epsilon once the round was charged), and a chart per metric.

import { api, q } from "./api.js";
import { lineChart, metricSeries } from "./chart.js";
import { badge, clear, fmtBytes, fmtDuration, fmtNumber, fmtTime, h, link, pairs, panel, table, versionLink } from "./dom.js";
import { fmtEpsilon, settingsFacts } from "./privacy.js";

const POLL_MS = 2000;

function people(ids, cls) {
  if (!ids.length) return h("span", { class: "muted" }, "—");
  return h("details", { class: cls }, h("summary", {}, String(ids.length)), h("ul", {}, ids.map((id) => h("li", {}, id))));
}

function roundsTable(rounds, isPrivate) {
  return table([
    { title: "Round", class: "num", cell: (r) => String(r.round) },
    { title: "Kind", cell: (r) => r.kind },
    { title: "State", cell: (r) => h("span", {}, badge(r.state), r.reason ? h("div", { class: "muted" }, r.reason) : null) },
    { title: "Participants", cell: (r) => people(r.participants, "participants") },
    { title: "Stragglers", cell: (r) => people(r.stragglers, "stragglers") },
    { title: "Updates", class: "num", cell: (r) => String(r.updates) },
    { title: "Duration", class: "num", cell: (r) => fmtDuration(r.duration_s) },
    { title: "Bytes in", class: "num", cell: (r) => fmtBytes(r.bytes_received) },
    { title: "Metrics", cell: (r) => pairs({ ...r.update_metrics, ...r.metrics }, fmtNumber) },
    isPrivate ? { title: "ε", class: "num epsilon", cell: (r) => fmtEpsilon(r.epsilon) } : null,
    { title: "Version", cell: (r) => versionLink(r.version) },
  ].filter(Boolean), [...rounds].reverse(), { empty: "No round yet: the run waits for its agents.", rowAttrs: (r) => ({ "data-round": r.round, "data-state": r.state }) });
}

function charts(rounds) {
  const series = metricSeries(rounds);
  const names = Object.keys(series).sort();
  if (!names.length) return h("p", { class: "muted" }, "Charts appear as rounds commit with metrics.");
  return h("div", { class: "charts" }, names.map((name) => lineChart(name, series[name])));
}

function summary(ctx, run) {
  const total = run.spec.rounds ?? 1;
  const cancel = ctx.action("Cancel run", "operator", () => api(`/runs/${q(run.run_id)}/cancel`, { method: "POST" }),
    { confirmText: `Cancel run ${run.run_id}?`, kind: "danger" });
  if (run.state !== "running") cancel.hidden = true;
  return h("div", { class: "summary" },
    h("dl", { class: "facts" },
      h("dt", {}, "State"), h("dd", { id: "run-state" }, badge(run.state), run.reason ? ` ${run.reason}` : ""),
      h("dt", {}, "Federation"), h("dd", {}, run.federation ? link(["runs"], run.federation, { federation: run.federation }) : "—"),
      h("dt", {}, "Trigger"), h("dd", {}, run.trigger),
      h("dt", {}, "Progress"), h("dd", {}, h("progress", { max: total, value: run.rounds_committed }), ` ${run.rounds_committed}/${total} rounds committed`),
      h("dt", {}, "Latest model"), h("dd", {}, versionLink(run.latest_version)),
      h("dt", {}, "Started"), h("dd", {}, fmtTime(run.created_unix)),
      h("dt", {}, "Finished"), h("dd", {}, fmtTime(run.finished_unix)),
      h("dt", {}, "Strategy"), h("dd", {}, run.spec.strategy?.name || "fedavg"),
      settingsFacts(run.spec)),
    cancel);
}

function body(ctx, run) {
  return [summary(ctx, run), panel("Metrics", charts(run.rounds)), panel("Rounds", roundsTable(run.rounds, Boolean(run.spec.privacy)))];
}

export async function runPage(ctx) {
  const [runId] = ctx.params;
  const run = await api(`/runs/${q(runId)}`);
  const live = h("div", { id: "run-live" }, body(ctx, run));
  const status = h("p", { class: "muted live-status", id: "live-status" }, run.state === "running" ? "Live: refreshed every 2 s." : "");
  const poll = async () => {
    try {
      const now = await api(`/runs/${q(runId)}`);
      clear(live).append(...body(ctx, now));
      status.textContent = now.state === "running" ? `Live: refreshed every 2 s (last ${fmtTime(Date.now() / 1000)}).` : `Run ${now.state}.`;
      if (now.state === "running") ctx.later(poll, POLL_MS);
    } catch (e) {
      status.textContent = `Refresh failed (${e.message}); retrying.`;
      ctx.later(poll, POLL_MS * 2);
    }
  };
  if (run.state === "running") ctx.later(poll, POLL_MS);
  return h("section", { class: "panel run" }, h("h1", {}, "Run ", h("span", { id: "run-id" }, run.run_id)), status, live);
}
