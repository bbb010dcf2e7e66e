// The dashboard: hash routes to views. Each view renders into #view and stops its polling and
// streams when its AbortSignal fires, which happens when the user goes elsewhere.

import { setToken, token } from "./api.js";
import { h, message } from "./dom.js";
import { compareView } from "./views/compare.js";
import { experimentView } from "./views/experiment.js";
import { listView } from "./views/list.js";
import { newView } from "./views/new.js";
import { sweepView } from "./views/sweep.js";

// A view's state (filters, what is compared, which variants show) is its URL's query, after the
// path: `#/?tag=lesson`, `#/compare?experiments=1,4`. A link shows the same view.
const ROUTES = [
  [/^#?\/?$/, (params) => (root, signal) => listView(root, signal, params)],
  [/^#\/new$/, () => newView],
  [/^#\/experiments\/(\d+)$/, (params, id) => (root, signal) => experimentView(root, signal, Number(id))],
  [/^#\/sweeps\/(\d+)$/, (params, id) => (root, signal) => sweepView(root, signal, Number(id))],
  [/^#\/compare$/, (params) => (root, signal) => compareView(root, signal, params)],
];

let leaving = null;

async function route() {
  leaving?.abort();
  leaving = new AbortController();
  const { signal } = leaving; // this visit's: a later one replaces `leaving`
  const root = document.getElementById("view");
  root.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const [hash, query = ""] = (location.hash || "#/").split("?", 2);
  for (const [pattern, make] of ROUTES) {
    const match = hash.match(pattern);
    if (!match) continue;
    try {
      await make(new URLSearchParams(query), ...match.slice(1))(root, signal);
    } catch (error) {
      if (!signal.aborted) root.replaceChildren(message("error", error.message));
    }
    return;
  }
  root.replaceChildren(message("error", `No page at ${hash}.`), h("a", { href: "#/" }, "All experiments"));
}

function showFault(text) {
  const fault = document.getElementById("fault");
  fault.textContent = `Something went wrong in the page: ${text}`;
  fault.hidden = false;
}

function setUpToken() {
  const field = document.getElementById("token");
  field.value = token();
  field.addEventListener("change", () => {
    setToken(field.value.trim());
    route();
  });
}

// A script error shows up as a message, never as a blank or half-drawn page.
window.addEventListener("error", (event) => showFault(event.message));
window.addEventListener("unhandledrejection", (event) =>
  showFault(String(event.reason?.message || event.reason)),
);
window.addEventListener("hashchange", route);
setUpToken();
route();
