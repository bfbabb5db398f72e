// Sign in: the operator pastes an API token (fst_...). It is kept in this tab's sessionStorage
// only, and sent as a bearer token; nothing is stored in a cookie.

import { ApiError } from "./api.js";
import { h } from "./dom.js";

export function loginPage(ctx, signIn) {
  const input = h("input", {
    type: "password", id: "token", name: "token", autocomplete: "off", spellcheck: "false",
    placeholder: "fst_…", required: true, "aria-label": "API token",
  });
  const error = h("p", { class: "error", id: "login-error", role: "alert", hidden: true });
  const form = h("form", { class: "login", id: "login" },
    h("h1", {}, "Sign in to the fedstream console"),
    h("p", {}, "Paste an API token of this tenant (", h("code", {}, "fedstream tokens create"),
      " makes one; the scheduler's bootstrap token works too). It stays in this browser tab only, and leaves with it."),
    h("label", { for: "token" }, "API token"), input,
    h("button", { type: "submit", id: "sign-in" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      await signIn(input.value.trim());
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401 ? `This token was refused: ${e.detail}` : String(e.message || e);
      error.hidden = false;
    }
  });
  ctx.main.append(form);
  input.focus();
}
