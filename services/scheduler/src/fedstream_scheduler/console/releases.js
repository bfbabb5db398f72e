// Releases and channels of a federation (present when the scheduler has them; hidden when its
// API answers 404): operators propose a version for a channel, admins approve or reject.

import { api, optional, q } from "./api.js";
import { badge, fmtTime, h, panel, table, versionLink } from "./dom.js";

function approvals(r) {
  const got = r.approvals || [];
  const needed = r.needed || {};
  const admins = got.filter((a) => a.kind === "admin").length;
  const sites = got.filter((a) => a.kind === "site").length;
  return h("span", { class: "approvals" }, `${admins}/${needed.admins ?? "?"} admins`,
    needed.sites ? ` · ${sites}/${needed.sites} sites` : "",
    got.length ? h("ul", { class: "who-approved" }, got.map((a) => h("li", {}, `${a.kind} ${a.name || a.id} · ${fmtTime(a.unix)}`))) : null);
}

function decide(ctx, r) {
  if (r.state !== "proposed") return h("span", { class: "muted" }, r.reason || fmtTime(r.decided_unix));
  const reason = h("input", { name: "reason", placeholder: "reason to reject", maxlength: 1000, class: "reason", hidden: !ctx.can("admin") });
  return h("span", { class: "decide" },
    ctx.action("Approve", "admin", () => api(`/releases/${q(r.release_id)}/approve`, { method: "POST", body: {} }), { kind: "primary" }),
    " ", reason, " ",
    ctx.action("Reject", "admin", () => api(`/releases/${q(r.release_id)}/reject`, { method: "POST", body: { reason: reason.value } }), { kind: "danger" }));
}

function proposeForm(ctx, fid, channels, models) {
  const channel = h("input", { name: "channel", placeholder: "production", maxlength: 63, required: true, list: "channel-names" });
  const version = h("select", { name: "version" }, models.map((m, i) => h("option", { value: m.version, selected: i === models.length - 1 }, m.version)));
  const note = h("input", { name: "note", placeholder: "note", maxlength: 1000 });
  const button = ctx.action("Propose release", "operator", () => api(`/federations/${q(fid)}/releases`, {
    method: "POST", body: { channel: channel.value.trim(), version: version.value, note: note.value },
  }), { kind: "primary" });
  const form = h("div", { class: "propose", hidden: !ctx.can("operator") },
    h("datalist", { id: "channel-names" }, Object.keys(channels).map((c) => h("option", { value: c }))),
    h("label", {}, "Channel ", channel), " ", h("label", {}, "Version ", version), " ", h("label", {}, "Note ", note), " ", button);
  return form;
}

/** The releases panel of federation ``fid``, or null when the scheduler has no releases. */
export async function releasesPanel(ctx, fid, models) {
  const page = await optional(`/federations/${q(fid)}/releases?limit=50`);
  if (page === null) return null;
  const answer = (await optional(`/federations/${q(fid)}/channels`)) || {};
  const channels = answer.channels && typeof answer.channels === "object" ? answer.channels : answer;
  return panel("Releases",
    h("div", { class: "channels" }, h("h3", {}, "Channels"),
      Object.keys(channels).length
        ? h("dl", { class: "facts" }, Object.entries(channels).map(([c, v]) => [h("dt", {}, c), h("dd", {}, versionLink(typeof v === "string" ? v : v?.version))]))
        : h("p", { class: "muted" }, "No channel has a released version yet.")),
    proposeForm(ctx, fid, channels, models),
    table([
      { title: "Release", cell: (r) => h("code", {}, r.release_id) },
      { title: "Channel", cell: (r) => r.channel },
      { title: "Version", cell: (r) => versionLink(r.version) },
      { title: "State", cell: (r) => badge(r.state) },
      { title: "Proposed", cell: (r) => h("span", {}, `${r.proposed_by || ""} · ${fmtTime(r.proposed_unix)}`, r.note ? h("div", { class: "muted" }, r.note) : null) },
      { title: "Approvals", cell: approvals },
      { title: "", class: "actions", cell: (r) => decide(ctx, r) },
    ], page.items, { empty: "No release proposed yet.", rowAttrs: (r) => ({ "data-release": r.release_id, "data-state": r.state }) }));
}
