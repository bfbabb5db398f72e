// One model version: what it is, pin and download; and, where the scheduler records them, its
// lineage (the runs, rounds and sites it came from, drawn as a graph) and its model card.

import { api, apiBlob, apiText, optional, q } from "./api.js";
import { fmtBytes, fmtNumber, fmtTime, h, link, pairs, panel, table, versionLink } from "./dom.js";
import { lineageGraph } from "./graph.js";
import { pinButton } from "./page-models.js";

function facts(m) {
  return h("dl", { class: "facts" },
    h("dt", {}, "Run"), h("dd", {}, link(["runs", m.run_id], m.run_id)),
    h("dt", {}, "Round"), h("dd", {}, String(m.round)),
    h("dt", {}, "Created"), h("dd", {}, fmtTime(m.created_unix)),
    h("dt", {}, "Size"), h("dd", {}, fmtBytes(m.size_bytes)),
    h("dt", {}, "SHA-256"), h("dd", {}, h("code", {}, m.sha256)),
    h("dt", {}, "Pinned"), h("dd", {}, m.pinned ? "yes: kept through retention" : "no"),
    h("dt", {}, "Metadata"), h("dd", {}, pairs(m.metadata)));
}

function downloadButton(ctx, m) {
  const [run, number] = m.version.split("/");
  const button = h("button", { type: "button", class: "action" }, "Download");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const url = URL.createObjectURL(await apiBlob(`/models/${q(run)}/${q(number)}/download`));
      const a = h("a", { href: url, download: `${run}-${number}.safetensors` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      ctx.showError(e);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function lineageFacts(doc) {
  const participants = doc.participants || [];
  return h("div", { class: "lineage" },
    h("dl", { class: "facts" },
      h("dt", {}, "Parents"), h("dd", {}, (doc.parents || []).length ? (doc.parents).map((p) => [versionLink(p), " "]) : "none (an initial model)"),
      h("dt", {}, "Kind"), h("dd", {}, `${doc.kind ?? "?"} round ${doc.round ?? "?"} of run ${doc.run_id ?? "?"}`),
      h("dt", {}, "Federation"), h("dd", {}, doc.federation_id || "—"),
      h("dt", {}, "Started by"), h("dd", {}, doc.started_by || "—"),
      h("dt", {}, "Strategy"), h("dd", {}, doc.strategy?.name || "—", " ", pairs(doc.strategy?.params, (v) => JSON.stringify(v))),
      h("dt", {}, "Task"), h("dd", {}, doc.task ? `${doc.task.name} ${doc.task.version || ""}` : "—"),
      h("dt", {}, "Compression"), h("dd", {}, typeof doc.compression === "string" ? doc.compression || "none" : JSON.stringify(doc.compression ?? "none")),
      h("dt", {}, "Distillation"), h("dd", {}, doc.distillation ? JSON.stringify(doc.distillation) : "none"),
      h("dt", {}, "Stragglers"), h("dd", {}, (doc.stragglers || []).join(", ") || "none"),
      h("dt", {}, "Code"), h("dd", {}, Object.entries(doc.code || {}).map(([who, pkgs]) => h("div", {}, `${who}: `, pairs(pkgs))))),
    h("h3", {}, "Participants"),
    table([
      { title: "Agent", cell: (p) => p.agent_id },
      { title: "Examples", class: "num", cell: (p) => String(p.examples ?? "—") },
      { title: "Metrics", cell: (p) => pairs(p.metrics, fmtNumber) },
      { title: "Versions", cell: (p) => [p.agent_version, p.task_version].filter(Boolean).join(" · ") || "—" },
      { title: "Data fingerprint", cell: (p) => (p.data_fingerprint ? h("code", { title: p.data_fingerprint }, p.data_fingerprint.slice(0, 16)) : "—") },
    ], participants, { empty: "No participant (an initial model)." }),
    evaluations(doc.evaluations));
}

function evaluations(evals) {
  if (!evals || (Array.isArray(evals) ? !evals.length : !Object.keys(evals).length)) return null;
  const rows = Array.isArray(evals) ? evals : Object.entries(evals).map(([k, v]) => ({ name: k, ...(typeof v === "object" ? v : { value: v }) }));
  return [h("h3", {}, "Evaluations"), h("ul", { class: "evaluations" }, rows.map((e) => h("li", {}, pairs(
    Object.fromEntries(Object.entries(e).filter(([, v]) => typeof v !== "object")), fmtNumber))))];
}

async function lineagePanels(ctx, run, number, version) {
  const base = `/models/${q(run)}/${q(number)}`;
  const shown = (e) => { ctx.showError(e); return null; }; // the version's page stays useful
  const [doc, graph] = await Promise.all([optional(`${base}/lineage`).catch(shown), optional(`${base}/lineage/graph?depth=3`).catch(shown)]);
  const panels = [];
  if (graph) panels.push(panel("Lineage graph", h("div", { class: "graph-box", id: "lineage-graph" }, lineageGraph(graph, version))));
  if (doc) panels.push(panel("Lineage", lineageFacts(doc)));
  if (doc) {
    try {
      panels.push(panel("Model card", h("pre", { class: "card", id: "model-card" }, await apiText(`${base}/card?format=markdown`))));
    } catch { /* no card on this scheduler */ }
  }
  return panels;
}

export async function modelPage(ctx) {
  const [run, number] = ctx.params;
  const m = await api(`/models/${q(run)}/${q(number)}`);
  const tensors = h("details", {}, h("summary", {}, `${m.tensors.length} tensors`),
    table([
      { title: "Name", cell: (t) => t.name }, { title: "Type", cell: (t) => t.dtype },
      { title: "Shape", cell: (t) => `[${t.shape.join(", ")}]` },
    ], m.tensors));
  return h("div", {},
    h("section", { class: "panel" }, h("h1", {}, "Model ", h("span", { id: "model-version" }, m.version)),
      facts(m), h("p", {}, pinButton(ctx, m), " ", downloadButton(ctx, m)), tensors),
    ...(await lineagePanels(ctx, run, number, m.version)));
}
