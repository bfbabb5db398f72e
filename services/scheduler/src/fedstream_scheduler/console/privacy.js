// Differential privacy and secure aggregation as the console shows them: a run spec's settings,
// a federation's budget (spent, remaining, a bar) and the training rounds it was spent on.

import { fmtNumber, fmtTime, h, link, panel, table } from "./dom.js";

const MODES = { central: "central (the aggregator noises the sum)", local: "local (each site noises its own change)" };

export function fmtEpsilon(x) {
  return x === null || x === undefined ? "—" : fmtNumber(x);
}

function fmtDelta(x) {
  return x === null || x === undefined ? "—" : Number(x).toExponential(); // 1e-5
}

/** A spec's differential privacy in one line, or null without it. */
export function privacyText(spec) {
  const p = spec?.privacy;
  if (!p) return null;
  return `${p.mode} DP · clip ${fmtNumber(p.clip_norm)} · noise ×${fmtNumber(p.noise_multiplier)} · ε ≤ ${fmtNumber(p.epsilon_budget)} at δ ${fmtDelta(p.delta)}`;
}

/** A spec's secure aggregation in one line, or null without it. */
export function secureText(spec) {
  const s = spec?.secure_aggregation;
  if (!s) return null;
  return `secure aggregation · up to ${fmtNumber(100 * s.max_dropout)}% may drop out · clip range ${fmtNumber(s.clip_range)} · ${fmtNumber(s.step_timeout_s)} s a step`;
}

/** The federations list's cell: short tags for what protects the updates, or a dash. */
export function privacyTags(spec) {
  const tags = [];
  if (spec.privacy) tags.push(h("span", { class: "pair privacy-tag", title: privacyText(spec) }, `${spec.privacy.mode} DP ε≤${fmtNumber(spec.privacy.epsilon_budget)}`));
  if (spec.secure_aggregation) tags.push(h("span", { class: "pair secure-tag", title: secureText(spec) }, "secure aggregation"));
  return tags.length ? h("span", { class: "pairs" }, tags) : h("span", { class: "muted" }, "—");
}

/** dt/dd pairs of a spec's privacy settings for a facts list: ``always`` shows "off" too. */
export function settingsFacts(spec, always = false) {
  const facts = [];
  for (const [title, text, id] of [["Privacy", privacyText(spec), "spec-privacy"], ["Secure aggregation", secureText(spec), "spec-secure-aggregation"]]) {
    if (text || always) facts.push(h("dt", {}, title), h("dd", { id }, text || h("span", { class: "muted" }, "off")));
  }
  return facts;
}

function budgetBar(report) {
  if (report.budget === null) return h("span", { class: "muted" }, "no budget now");
  const share = report.budget ? Math.min(1, report.spent / report.budget) : 1;
  return h("span", {},
    h("meter", { id: "privacy-bar", class: "budget", min: 0, max: report.budget, value: Math.min(report.spent, report.budget),
      low: 0.75 * report.budget, high: 0.9 * report.budget, optimum: 0, title: `${fmtNumber(100 * share)}% of the budget spent` }),
    ` ${fmtNumber(100 * share)}% spent`);
}

function chargesTable(charges) {
  return table([
    { title: "Run", cell: (c) => link(["runs", c.run_id], c.run_id) },
    { title: "Round", class: "num", cell: (c) => String(c.round) },
    { title: "Mode", cell: (c) => c.mode },
    { title: "Noise ×", class: "num", cell: (c) => fmtNumber(c.noise_multiplier) },
    { title: "Selected", class: "num", cell: (c) => `${c.selected} of ${c.eligible}` },
    { title: "ε after", class: "num epsilon", cell: (c) => fmtEpsilon(c.epsilon) },
    { title: "Charged", cell: (c) => fmtTime(c.charged_unix) },
  ], [...charges].reverse(), { empty: "No training round has spent any of it yet.",
    rowAttrs: (c) => ({ "data-run": c.run_id, "data-round": c.round }) });
}

/** A federation's privacy panel (its settings now and GET /federations/{id}/privacy), or null
 * when it has neither privacy now nor any round charged. */
export function privacyPanel(spec, report) {
  const p = spec.privacy;
  if (!p && !report?.charges?.length) return null;
  const facts = h("dl", { class: "facts", id: "privacy-facts" },
    h("dt", {}, "Mode"), h("dd", { id: "privacy-mode" }, p ? MODES[p.mode] || p.mode : h("span", { class: "muted" }, "off now")),
    p ? [h("dt", {}, "Clip norm"), h("dd", {}, fmtNumber(p.clip_norm)),
      h("dt", {}, "Noise multiplier"), h("dd", {}, fmtNumber(p.noise_multiplier))] : [],
    h("dt", {}, "Delta"), h("dd", {}, fmtDelta(report?.delta ?? p?.delta)));
  if (!report) return panel("Privacy", facts);
  facts.append(
    h("dt", {}, "Epsilon spent"), h("dd", { id: "privacy-spent" }, fmtEpsilon(report.spent), report.budget !== null ? ` of ${fmtNumber(report.budget)}` : ""),
    h("dt", {}, "Remaining"), h("dd", { id: "privacy-remaining" }, fmtEpsilon(report.remaining)),
    h("dt", {}, "Budget"), h("dd", {}, budgetBar(report)));
  return h("section", { class: "panel privacy", id: "privacy" }, h("h2", {}, "Privacy"), facts,
    h("h3", {}, "Training rounds charged"), chargesTable(report.charges));
}
