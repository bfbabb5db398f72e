// Agents: status, last heartbeat, versions and capabilities; operators disable and enable them.

import { api, q } from "./api.js";
import { badge, fmtAgo, fmtBytes, fmtTime, h, pairs, panel, table } from "./dom.js";
import { pager } from "./paging.js";

function versions(a) {
  const c = a.capabilities || {};
  const known = { agent: c.agent_version, torch: c.torch_version };
  const shown = Object.fromEntries(Object.entries(known).filter(([, v]) => v));
  return pairs(shown);
}

function device(a) {
  const c = a.capabilities || {};
  const parts = [c.device || "?"];
  if (c.gpu_name) parts.push(`${c.gpu_name}${c.gpu_memory_bytes ? ` (${fmtBytes(Number(c.gpu_memory_bytes))})` : ""}`);
  if (c.cpu_count) parts.push(`${c.cpu_count} CPUs`);
  return parts.join(" · ");
}

export async function agentsPage(ctx) {
  const status = ctx.query.get("status") || "";
  const page = await api(`/agents?limit=100&status=${q(status)}&page_token=${q(ctx.query.get("page_token") || "")}`);
  const toggle = (a) => (a.status === "disabled"
    ? ctx.action("Enable", "operator", () => api(`/agents/${q(a.agent_id)}/enable`, { method: "POST" }))
    : ctx.action("Disable", "operator", () => api(`/agents/${q(a.agent_id)}/disable`, { method: "POST" }),
      { confirmText: `Disable agent ${a.agent_id}? It gets no more work until enabled.`, kind: "danger" }));
  const filters = h("p", { class: "filters" }, ["", "alive", "stale", "disabled"].map((s) =>
    h("a", { href: s ? `#/agents?status=${s}` : "#/agents", class: s === status ? "active" : "" }, s || "all")));
  return panel("Agents", filters,
    table([
      { title: "Agent", cell: (a) => h("strong", { class: "agent-id" }, a.agent_id) },
      { title: "Status", cell: (a) => h("span", {}, badge(a.status), a.connected ? h("small", { class: "muted" }, " connected") : null) },
      { title: "Last heartbeat", cell: (a) => h("span", { title: fmtTime(a.last_heartbeat_unix) }, fmtAgo(a.last_heartbeat_unix)) },
      { title: "Versions", cell: versions },
      { title: "Device", cell: device },
      { title: "Tasks", cell: (a) => a.tasks.join(", ") || "—" },
      { title: "Labels", cell: (a) => pairs(a.labels) },
      { title: "Enrolled", cell: (a) => (a.enrolled_unix ? fmtTime(a.enrolled_unix) : h("span", { class: "muted" }, "plaintext")) },
      { title: "", class: "actions", cell: toggle },
    ], page.items, { empty: "No agent has registered.", rowAttrs: (a) => ({ "data-agent": a.agent_id }) }),
    pager(ctx, page));
}
