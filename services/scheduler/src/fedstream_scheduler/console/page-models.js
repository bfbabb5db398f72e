// Models: pick a federation, then its versions with pins, and (when present) its releases.

import { api, q } from "./api.js";
import { fmtBytes, fmtTime, h, link, panel, table, versionLink } from "./dom.js";
import { pager } from "./paging.js";
import { releasesPanel } from "./releases.js";

async function pick(ctx) {
  const page = await api("/federations?limit=500");
  if (page.items.length === 1) { ctx.go(`#/models/${encodeURIComponent(page.items[0].federation_id)}`); return h("p", {}, "…"); }
  return panel("Models", h("p", {}, "Choose a federation:"),
    h("ul", { class: "choices" }, page.items.map((f) => h("li", {}, link(["models", f.federation_id], f.federation_id),
      f.latest_version ? h("span", { class: "muted" }, ` latest ${f.latest_version}`) : null))));
}

export function pinButton(ctx, m) {
  const [run, number] = m.version.split("/");
  return m.pinned
    ? ctx.action("Unpin", "operator", () => api(`/models/${q(run)}/${q(number)}/unpin`, { method: "POST" }))
    : ctx.action("Pin", "operator", () => api(`/models/${q(run)}/${q(number)}/pin`, { method: "POST" }));
}

export async function modelsPage(ctx) {
  const [fid] = ctx.params;
  if (!fid) return pick(ctx);
  const page = await api(`/federations/${q(fid)}/models?limit=100&page_token=${q(ctx.query.get("page_token") || "")}`);
  const versions = panel(`Models of ${fid}`,
    table([
      { title: "Version", cell: (m) => versionLink(m.version) },
      { title: "Run", cell: (m) => link(["runs", m.run_id], m.run_id) },
      { title: "Round", class: "num", cell: (m) => String(m.round) },
      { title: "Created", cell: (m) => fmtTime(m.created_unix) },
      { title: "Size", class: "num", cell: (m) => fmtBytes(m.size_bytes) },
      { title: "SHA-256", cell: (m) => h("code", { title: m.sha256 }, m.sha256.slice(0, 12)) },
      { title: "Pinned", cell: (m) => (m.pinned ? "pinned" : "") },
      { title: "", class: "actions", cell: (m) => pinButton(ctx, m) },
    ], page.items, { empty: "No model yet: start a run.", rowAttrs: (m) => ({ "data-version": m.version }) }),
    pager(ctx, page));
  const releases = await releasesPanel(ctx, fid, page.items);
  return h("div", {}, versions, releases);
}
