// The audit log: every state-changing action, who did it and when (operators and admins).

import { ApiError, api, q } from "./api.js";
import { fmtTime, h, pairs, panel, table } from "./dom.js";
import { pager } from "./paging.js";

export async function auditPage(ctx) {
  const action = ctx.query.get("action") || "";
  const actor = ctx.query.get("actor") || "";
  let page;
  try {
    page = await api(`/audit?limit=50&action=${q(action)}&actor=${q(actor)}&page_token=${q(ctx.query.get("page_token") || "")}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) {
      return panel("Audit log", h("p", { class: "error", id: "audit-refused" }, `The audit log is not open to this token: ${e.detail}`));
    }
    throw e;
  }
  const filter = h("form", { class: "filters" },
    h("label", {}, "Action ", h("input", { name: "action", value: action, placeholder: "run.cancel", maxlength: 64 })),
    h("label", {}, "Actor ", h("input", { name: "actor", value: actor, placeholder: "token/tok-…", maxlength: 300 })),
    h("button", { type: "submit" }, "Filter"));
  filter.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = new URLSearchParams(new FormData(filter));
    for (const [k, v] of [...params]) if (!v) params.delete(k);
    ctx.go(`#/audit?${params}`);
  });
  return panel("Audit log", filter,
    table([
      { title: "#", class: "num", cell: (e) => String(e.seq) },
      { title: "Time", cell: (e) => fmtTime(e.time_unix) },
      { title: "Action", cell: (e) => h("code", {}, e.action) },
      { title: "Target", cell: (e) => e.target },
      { title: "Actor", cell: (e) => h("span", { title: e.actor }, e.actor_name || e.actor, h("small", { class: "muted" }, ` ${e.role}`)) },
      { title: "Detail", cell: (e) => pairs(e.detail) },
    ], page.items, { empty: "Nothing recorded yet." }),
    pager(ctx, page));
}
