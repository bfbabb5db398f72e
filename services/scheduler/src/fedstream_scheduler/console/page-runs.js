// Runs, newest first as the API lists them, filtered by federation and state.

import { api, q } from "./api.js";
import { badge, fmtTime, h, link, panel, table, versionLink } from "./dom.js";
import { pager } from "./paging.js";

export async function runsPage(ctx) {
  const federation = ctx.query.get("federation") || "";
  const state = ctx.query.get("state") || "";
  const page = await api(`/runs?limit=50&federation=${q(federation)}&state=${q(state)}&page_token=${q(ctx.query.get("page_token") || "")}`);
  const filter = h("form", { class: "filters" },
    h("label", {}, "Federation ", h("input", { name: "federation", value: federation, maxlength: 63 })),
    h("label", {}, "State ", h("select", { name: "state" },
      ["", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === state }, s || "any")))),
    h("button", { type: "submit" }, "Filter"));
  filter.addEventListener("submit", (e) => {
    e.preventDefault();
    const params = new URLSearchParams(new FormData(filter));
    for (const [k, v] of [...params]) if (!v) params.delete(k);
    ctx.go(`#/runs?${params}`);
  });
  return panel("Runs", filter,
    table([
      { title: "Run", cell: (r) => link(["runs", r.run_id], r.run_id) },
      { title: "Federation", cell: (r) => r.federation || "—" },
      { title: "State", cell: (r) => h("span", {}, badge(r.state), r.reason ? h("div", { class: "muted" }, r.reason) : null) },
      { title: "Trigger", cell: (r) => r.trigger },
      { title: "Rounds", class: "num", cell: (r) => `${r.rounds_committed}/${r.spec.rounds ?? 1}` },
      { title: "Latest model", cell: (r) => versionLink(r.latest_version) },
      { title: "Started", cell: (r) => fmtTime(r.created_unix) },
      { title: "Finished", cell: (r) => fmtTime(r.finished_unix) },
    ], page.items, { empty: "No run matches." }),
    pager(ctx, page));
}
