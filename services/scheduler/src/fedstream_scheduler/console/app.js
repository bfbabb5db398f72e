// The console's shell: who is signed in, the navigation, the pages by URL fragment, and the
// buttons of state-changing actions (shown by role; the API still checks every request).

import { ApiError, api, session } from "./api.js";
import { clear, h } from "./dom.js";
import { agentsPage } from "./page-agents.js";
import { auditPage } from "./page-audit.js";
import { federationPage } from "./page-federation.js";
import { federationsPage } from "./page-federations.js";
import { loginPage } from "./page-login.js";
import { modelPage } from "./page-model.js";
import { modelsPage } from "./page-models.js";
import { requestsPage } from "./page-requests.js";
import { runPage } from "./page-run.js";
import { runsPage } from "./page-runs.js";

const ROLES = ["viewer", "operator", "admin"];
const NAV = [
  ["federations", "Federations"], ["runs", "Runs"], ["agents", "Agents"], ["models", "Models"],
  ["requests", "Run requests"], ["audit", "Audit log"],
];
const ROUTES = [
  [/^federations$/, federationsPage],
  [/^federations\/([^/]+)$/, federationPage],
  [/^runs$/, runsPage],
  [/^runs\/([^/]+)$/, runPage],
  [/^agents$/, agentsPage],
  [/^models$/, modelsPage],
  [/^models\/([^/]+)$/, modelsPage],
  [/^model\/([^/]+)\/([0-9]{6})$/, modelPage],
  [/^requests$/, requestsPage],
  [/^audit$/, auditPage],
];

let me = null;
let current = null; // the shown page's context: its timers end when another page is shown

function flash(message, kind = "error") {
  const box = document.getElementById("flash");
  box.className = `flash flash-${kind}`;
  box.textContent = message;
  box.hidden = !message;
}

export function showError(e) {
  if (e instanceof ApiError && e.status === 401) {
    session.clear();
    me = null;
    location.hash = "#/login";
  }
  flash(e instanceof ApiError ? `Refused (${e.status} ${e.code}): ${e.detail}` : String(e));
}

function can(role) {
  return me !== null && ROLES.indexOf(me.role) >= ROLES.indexOf(role);
}

/** A button for a state-changing action that needs ``role``: hidden for tokens below it. The
 * API refuses such requests anyway; the refusal is shown. After success, ``done`` or a refresh. */
function action(label, role, run, { confirmText, done, kind = "" } = {}) {
  const button = h("button", {
    type: "button", class: `action ${kind}`, "data-role": role, "data-action": label, hidden: !can(role),
  }, label);
  button.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    try {
      const result = await run();
      flash(`${label}: done`, "ok");
      if (done) done(result); else current?.refresh();
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function renderNav(active) {
  const nav = clear(document.getElementById("nav"));
  if (!me) return;
  for (const [route, title] of NAV) {
    nav.append(h("a", { href: `#/${route}`, class: active.startsWith(route.replace(/s$/, "")) ? "active" : "" }, title));
  }
  const who = clear(document.getElementById("who"));
  who.append(h("span", { class: "who", title: `token ${me.token_id} of tenant ${me.tenant}` },
    `${me.name || me.token_id} · ${me.role} · ${me.tenant}`),
    h("button", { type: "button", class: "link", id: "logout", onclick: logout }, "Sign out"));
}

function logout() {
  session.clear();
  me = null;
  clear(document.getElementById("who"));
  location.hash = "#/login";
}

async function whoami() {
  const token = session.token();
  if (!token) me = null; // signed out, in this tab or by a refusal
  if (me || !token) return me;
  const found = await api("/whoami");
  if (session.token() === token) me = found; // not a stale answer about a token since dropped
  return me;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { path: path.split("/").map(decodeURIComponent).join("/"), query: new URLSearchParams(query) };
}

function context(main, query, params) {
  const timers = new Set();
  const ctx = {
    main, query, params, me, can, action, flash, showError,
    alive: true,
    /** Calls fn after ms, unless another page was shown meanwhile. */
    later(fn, ms) {
      const id = setTimeout(() => { timers.delete(id); if (ctx.alive) fn(); }, ms);
      timers.add(id);
    },
    stop() { ctx.alive = false; timers.forEach(clearTimeout); },
    refresh: () => route(),
    /** Shows another page, unless another was shown meanwhile (a late answer never navigates). */
    go(hash) { if (ctx.alive) location.hash = hash; },
  };
  return ctx;
}

let routing = 0; // the newest call of route: an older one still waiting gives way to it

async function route() {
  const mine = ++routing;
  current?.stop();
  delete document.body.dataset.shown;
  const main = document.getElementById("view");
  const { path, query } = parseHash();
  try {
    await whoami();
  } catch (e) {
    if (mine !== routing) return;
    if (!(e instanceof ApiError && e.status === 401)) { showError(e); return; }
    session.clear();
  }
  if (mine !== routing) return;
  if (!me || path === "login") {
    renderNav("");
    current = context(clear(main), query, []);
    loginPage(current, async (token) => {
      session.set(token);
      me = null;
      try {
        await whoami(); // throws 401 for a bad token: the login page says so
      } catch (e) {
        session.clear();
        throw e;
      }
      flash("");
      // Another page asked for meanwhile: show it, signed in, rather than leave for the default.
      if (mine !== routing) { await route(); return; }
      const target = path && path !== "login" ? location.hash : "#/federations";
      if (location.hash === target) await route(); else location.hash = target;
    });
    document.body.dataset.shown = "login";
    return;
  }
  const found = ROUTES.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
  if (!found) { location.hash = "#/federations"; return; }
  const [match, page] = found;
  renderNav(path);
  const ctx = context(main, query, match.slice(1));
  current = ctx;
  document.body.dataset.page = path.split("/")[0];
  try {
    const content = await page(ctx);
    if (ctx.alive) {
      clear(main).append(content);
      document.body.dataset.shown = path; // the page drawn, for tests and screenshots to wait on
    }
  } catch (e) {
    if (!ctx.alive) return;
    showError(e);
    clear(main).append(h("p", { class: "muted" }, "This page could not be loaded."));
  }
}

window.addEventListener("hashchange", () => { flash(""); route(); });
route();
