// Federations: what each trains, how its updates are protected, its schedule and next slot, its
// newest model; operators start runs. Each leads to its own page (page-federation.js).

import { api, q } from "./api.js";
import { fmtAgo, fmtTime, h, link, panel, table, versionLink } from "./dom.js";
import { pager } from "./paging.js";
import { privacyTags } from "./privacy.js";

export function schedule(f) {
  if (!f.schedule) return h("span", { class: "muted" }, "on request");
  return h("span", {}, h("code", {}, f.schedule.cron), ` ${f.schedule.timezone}`,
    f.schedule.missed === "run_once" ? " · missed slots run once" : "");
}

export function nextSlot(f) {
  if (!f.schedule) return "—";
  if (f.schedule.broken) return h("span", { class: "error" }, `broken: ${f.schedule.broken}`);
  return h("span", { title: fmtTime(f.schedule.next_unix) }, fmtTime(f.schedule.next_unix), h("br"),
    h("small", { class: "muted" }, fmtAgo(f.schedule.next_unix)));
}

export async function federationsPage(ctx) {
  const page = await api(`/federations?limit=50&page_token=${q(ctx.query.get("page_token") || "")}`);
  const start = (f) => ctx.action("Start run", "operator", () => api(`/federations/${q(f.federation_id)}/runs`, { method: "POST", body: {} }),
    { done: (run) => ctx.go(`#/runs/${encodeURIComponent(run.run_id)}`), kind: "primary" });
  return panel("Federations",
    table([
      { title: "Federation", cell: (f) => h("div", {}, h("strong", { class: "fed-id" }, link(["federations", f.federation_id], f.federation_id)),
        f.description ? h("div", { class: "muted description" }, f.description) : null) },
      { title: "Task", cell: (f) => `${f.spec.task} · ${f.spec.rounds} rounds · ≥${f.spec.min_agents} agents` },
      { title: "Strategy", cell: (f) => f.spec.strategy?.name || "fedavg" },
      { title: "Privacy", cell: (f) => privacyTags(f.spec) },
      { title: "Schedule", cell: schedule },
      { title: "Next slot", cell: nextSlot },
      { title: "Latest model", cell: (f) => versionLink(f.latest_version) },
      { title: "", class: "actions", cell: (f) => h("span", {},
        link(["runs"], "Runs", { federation: f.federation_id }), " ",
        link(["models", f.federation_id], "Models"), " ", start(f)) },
    ], page.items, { empty: "No federation yet: create one with `fedstream federations create`.",
      rowAttrs: (f) => ({ "data-federation": f.federation_id }) }),
    pager(ctx, page));
}
