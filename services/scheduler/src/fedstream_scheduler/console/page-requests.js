// Runs that sites requested (when the scheduler has them; hidden when its API answers 404):
// operators approve or deny the pending ones.

import { ApiError, api, optional, q } from "./api.js";
import { badge, fmtTime, h, link, panel, table } from "./dom.js";

function decide(ctx, r) {
  if (r.state !== "pending") return r.run_id ? link(["runs", r.run_id], r.run_id) : h("span", { class: "muted" }, r.deny_reason || r.decided_by || "");
  const id = r.request_id;
  const reason = h("input", { name: "reason", placeholder: "reason to deny", maxlength: 500, class: "reason", hidden: !ctx.can("operator") });
  return h("span", { class: "decide" },
    ctx.action("Approve", "operator", () => api(`/run-requests/${q(id)}/approve`, { method: "POST", body: {} }), { kind: "primary" }),
    " ", reason, " ",
    ctx.action("Deny", "operator", () => api(`/run-requests/${q(id)}/deny`, { method: "POST", body: { reason: reason.value } }), { kind: "danger" }));
}

export async function requestsPage(ctx) {
  const federations = (await api("/federations?limit=500")).items;
  let pages;
  try {
    pages = await Promise.all(federations.map((f) => optional(`/federations/${q(f.federation_id)}/run-requests?limit=100`)));
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return panel("Run requests", h("p", { class: "error" }, `Not open to this token: ${e.detail}`));
    throw e;
  }
  if (pages.every((p) => p === null)) {
    return panel("Run requests", h("p", { class: "muted", id: "requests-unavailable" }, "This scheduler does not take run requests from sites."));
  }
  const items = pages.flatMap((p) => (p ? p.items : []));
  return panel("Run requests",
    table([
      { title: "Request", cell: (r) => h("code", {}, r.request_id) },
      { title: "Federation", cell: (r) => r.federation_id },
      { title: "Site", cell: (r) => r.agent_id },
      { title: "Reason", cell: (r) => r.reason || "—" },
      { title: "State", cell: (r) => badge(r.state) },
      { title: "Requested", cell: (r) => fmtTime(r.requested_unix) },
      { title: "", class: "actions", cell: (r) => decide(ctx, r) },
    ], items, { empty: "No site has requested a run." }));
}
