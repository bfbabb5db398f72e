// Paging through the API's lists: the next page's token travels in the page's URL fragment.

import { h } from "./dom.js";

export function pager(ctx, page) {
  const path = location.hash.replace(/^#/, "").split("?")[0];
  const here = new URLSearchParams(ctx.query);
  const links = [];
  if (here.get("page_token")) {
    here.delete("page_token");
    links.push(h("a", { href: `#${path}?${here}`, class: "page-first" }, "« First page"));
  }
  if (page.next_page_token) {
    here.set("page_token", page.next_page_token);
    links.push(h("a", { href: `#${path}?${here}`, class: "page-next" }, "Next page »"));
  }
  return links.length ? h("p", { class: "pager" }, links) : null;
}
