// Experiments, newest first, and sweeps, each with status, progress and tags; refreshed every few
// seconds so running ones move. Filter by status or tag; tick experiments to compare them.

import { ApiError, get } from "../api.js";
import { sleep } from "../curve.js";
import { tagChips } from "../annotations.js";
import { accuracy, count, describeSpec, h, message, statusBadge } from "../dom.js";
import { inOrder, vocabulary } from "../vocabulary.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const PAGE = 50;
const REFRESH_MS = 2000;

export async function listView(root, signal, params = new URLSearchParams()) {
  const { variants: order } = await vocabulary();
  // The filters, the page and the experiments ticked for comparison live in the URL.
  const state = {
    status: params.get("status") || "",
    tag: params.get("tag") || "",
    offset: Math.max(0, Number(params.get("offset")) || 0),
    selected: new Set((params.get("selected") || "").split(",").filter(Boolean).map(Number)),
  };
  const remember = () => {
    const query = new URLSearchParams();
    if (state.status) query.set("status", state.status);
    if (state.tag) query.set("tag", state.tag);
    if (state.offset) query.set("offset", state.offset);
    if (state.selected.size) query.set("selected", [...state.selected].join(","));
    history.replaceState(null, "", `#/${query.size ? `?${query}` : ""}`);
  };
  const experiments = h("div");
  const sweeps = h("div");
  const changed = () => ((state.offset = 0), remember(), refresh());
  const filter = h(
    "select",
    { "aria-label": "status", onchange: () => ((state.status = filter.value), changed()) },
    h("option", { value: "" }, "any status"),
    STATUSES.map((status) => h("option", { value: status, selected: status === state.status }, status)),
  );
  const tagFilter = h("input", {
    "aria-label": "tag",
    name: "tag",
    placeholder: "tag",
    value: state.tag,
    onchange: () => ((state.tag = tagFilter.value.trim()), changed()),
  });
  const compare = h("a", { class: "button", "data-testid": "compare-selected" }, "Compare ticked");
  const showSelection = () => {
    const ids = [...state.selected];
    compare.hidden = ids.length < 2;
    compare.href = `#/compare?${new URLSearchParams({ experiments: ids.join(",") })}`;
  };
  const tick = (id, on) => {
    if (on) state.selected.add(id);
    else state.selected.delete(id);
    remember();
    showSelection();
  };
  showSelection();
  root.replaceChildren(
    h("h1", {}, "Experiments"),
    h(
      "p",
      { class: "toolbar" },
      h("a", { class: "button", href: "#/new" }, "New experiment"),
      filter,
      tagFilter,
      compare,
    ),
    experiments,
    h("h2", {}, "Sweeps"),
    sweeps,
  );

  let sweepList = true; // until the service shows it has no GET /sweeps
  const refresh = async () => {
    try {
      const query = new URLSearchParams({ limit: PAGE, offset: state.offset });
      if (state.status) query.set("status", state.status);
      if (state.tag) query.set("tag", state.tag);
      const page = await get(`/experiments?${query}`);
      if (signal.aborted) return;
      experiments.replaceChildren(experimentsTable(page, state, order, { refresh, remember, tick }));
      let listed = null;
      if (sweepList) {
        try {
          listed = await get(`/sweeps${state.tag ? `?${new URLSearchParams({ tag: state.tag })}` : ""}`);
        } catch (error) {
          if (!(error instanceof ApiError && (error.missingRoute || error.status === 405))) throw error;
          sweepList = false;
        }
      }
      if (!signal.aborted) sweeps.replaceChildren(...sweepsView(listed, page.items));
    } catch (error) {
      if (!signal.aborted) experiments.replaceChildren(message("error", error.message));
    }
  };
  while (!signal.aborted) {
    await refresh();
    await sleep(REFRESH_MS, signal);
  }
}

// `on`: refresh() the list, remember() the state in the URL, tick(id, checked) for comparison.
function experimentsTable(page, state, order, on) {
  if (!page.total) {
    if (state.tag || state.status) return message("info", "No experiments match these filters.");
    return message("info", "No experiments yet: start one with “New experiment”.");
  }
  // A test-accuracy column per variant the listed experiments trained: the study's pair, unless
  // some asked for others.
  const variants = inOrder([...new Set(page.items.flatMap((e) => Object.keys(e.results)))], order);
  const rows = page.items.map((e) =>
    h(
      "tr",
      { "data-experiment": e.id },
      h(
        "td",
        {},
        h("input", {
          type: "checkbox",
          "aria-label": `compare #${e.id}`,
          checked: state.selected.has(e.id),
          onchange: (event) => on.tick(e.id, event.target.checked),
        }),
      ),
      h("td", {}, h("a", { href: `#/experiments/${e.id}` }, `#${e.id}`)),
      h("td", {}, statusBadge(e.status)),
      h(
        "td",
        {},
        h("a", { href: `#/experiments/${e.id}` }, e.name ? `${e.name} · ` : "", describeSpec(e.spec)),
        " ",
        tagChips(e.tags),
      ),
      h("td", {}, progressCell(e)),
      variants.map((variant) =>
        h("td", { class: "number", "data-variant": variant }, accuracy(e.results[variant]?.test_accuracy)),
      ),
      h("td", { class: "muted" }, new Date(e.created_at).toLocaleString()),
    ),
  );
  const move = (offset) => () => {
    state.offset = Math.max(0, offset);
    on.remember();
    on.refresh();
  };
  const last = Math.min(page.offset + page.items.length, page.total);
  return h(
    "div",
    {},
    h(
      "table",
      { class: "list", "data-testid": "experiments" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          [
            "compare",
            "",
            "status",
            "experiment",
            "progress",
            ...variants.map((variant) => `${variant} test acc`),
            "created",
          ].map((t) => h("th", {}, t)),
        ),
      ),
      h("tbody", {}, rows),
    ),
    h(
      "p",
      { class: "muted pager" },
      `${page.offset + 1}–${last} of ${page.total} `,
      page.offset > 0
        ? h("button", { type: "button", class: "secondary", onclick: move(page.offset - PAGE) }, "newer")
        : null,
      last < page.total
        ? h("button", { type: "button", class: "secondary", onclick: move(page.offset + PAGE) }, "older")
        : null,
    ),
  );
}

function progressCell(experiment) {
  const { step, total } = experiment.progress;
  const text = experiment.status === "failed" ? "failed" : `${count(step)} / ${count(total)}`;
  return h("span", { class: "mini-progress" }, h("progress", { max: total || 1, value: step || 0 }), text);
}

// Sweeps from GET /sweeps where the service lists them, else those the listed experiments name.
function sweepsView(listed, experiments) {
  const items = Array.isArray(listed) ? listed : listed?.items;
  const open = h(
    "form",
    {
      class: "inline",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/sweeps/${event.target.elements.sweep.value}`;
      },
    },
    h("label", {}, "Open sweep ", h("input", { name: "sweep", type: "number", min: 1, required: true })),
    h("button", { type: "submit", class: "secondary" }, "Go"),
  );
  if (items?.length) {
    const rows = items.map((sweep) =>
      h(
        "tr",
        {},
        h("td", {}, h("a", { href: `#/sweeps/${sweep.id}` }, `sweep #${sweep.id}`, sweep.name ? ` · ${sweep.name}` : "")),
        h("td", {}, sweep.status ? statusBadge(sweep.status) : ""),
        h("td", {}, tagChips(sweep.tags)),
        h("td", {}, sweepProgress(sweep)),
      ),
    );
    return [h("table", { class: "list", "data-testid": "sweeps" }, h("tbody", {}, rows)), open];
  }
  const byId = new Map();
  for (const e of experiments) {
    if (e.sweep_id) byId.set(e.sweep_id, [...(byId.get(e.sweep_id) || []), e]);
  }
  if (!byId.size) return [h("p", { class: "muted" }, "No sweeps among these experiments."), open];
  const rows = [...byId].map(([id, members]) => {
    const done = members.filter((e) => e.status === "succeeded").length;
    return h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/sweeps/${id}` }, `sweep #${id}`)),
      h("td", {}, `${done} of ${members.length} listed experiments succeeded`),
    );
  });
  return [h("table", { class: "list", "data-testid": "sweeps" }, h("tbody", {}, rows)), open];
}

function sweepProgress(sweep) {
  const counts = sweep.counts || sweep.progress;
  if (counts && typeof counts === "object") {
    return Object.entries(counts)
      .map(([key, value]) => `${key} ${value}`)
      .join(" · ");
  }
  return "";
}
