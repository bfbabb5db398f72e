// One federation: what its runs train and how (privacy and secure aggregation among its
// settings), its schedule, its newest model, and under differential privacy its budget: the
// epsilon spent, what remains, and each training round it was spent on.

import { api, optional, q } from "./api.js";
import { h, link, panel, versionLink } from "./dom.js";
import { nextSlot, schedule } from "./page-federations.js";
import { privacyPanel, settingsFacts } from "./privacy.js";

function facts(f) {
  const spec = f.spec;
  return h("dl", { class: "facts" },
    h("dt", {}, "Task"), h("dd", {}, `${spec.task} · ${spec.rounds} rounds · ≥${spec.min_agents} agents`),
    h("dt", {}, "Strategy"), h("dd", {}, spec.strategy?.name || "fedavg"),
    h("dt", {}, "Schedule"), h("dd", {}, schedule(f)),
    h("dt", {}, "Next slot"), h("dd", {}, nextSlot(f)),
    h("dt", {}, "Latest model"), h("dd", {}, versionLink(f.latest_version)),
    settingsFacts(spec, true));
}

export async function federationPage(ctx) {
  const [fid] = ctx.params;
  const [f, report] = await Promise.all([api(`/federations/${q(fid)}`), optional(`/federations/${q(fid)}/privacy`)]);
  const start = ctx.action("Start run", "operator", () => api(`/federations/${q(fid)}/runs`, { method: "POST", body: {} }),
    { done: (run) => ctx.go(`#/runs/${encodeURIComponent(run.run_id)}`), kind: "primary" });
  return h("div", { class: "federation", "data-federation": f.federation_id },
    h("section", { class: "panel" },
      h("h1", {}, "Federation ", h("span", { id: "federation-id" }, f.federation_id)),
      f.description ? h("p", { class: "muted description" }, f.description) : null,
      h("div", { class: "summary" }, facts(f), h("span", {},
        link(["runs"], "Runs", { federation: f.federation_id }), " ", link(["models", f.federation_id], "Models"), " ", start))),
    privacyPanel(f.spec, report));
}
