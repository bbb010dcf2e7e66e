// A sweep: its status and progress, the report table (GET /sweeps/{id}/report), the report's curve
// plot (report.png), and a grid of its cells' curves. Refreshed until every cell has finished.

import { ApiError, get, imageUrl } from "../api.js";
import { annotations } from "../annotations.js";
import { CurveChart, sleep } from "../curve.js";
import { accuracy, count, h, message, statusBadge, TERMINAL } from "../dom.js";

const REFRESH_MS = 3000;
const MOST_CURVES = 60;

export async function sweepView(root, signal, id) {
  let sweep;
  try {
    sweep = await get(`/sweeps/${id}`);
  } catch (error) {
    if (signal.aborted) return;
    if (!(error instanceof ApiError && error.missingRoute)) throw error;
    root.replaceChildren(
      h("h1", {}, `Sweep ${id}`),
      message("info", "This service has no sweeps: GET /sweeps/{id} is not one of its routes."),
    );
    return;
  }
  if (signal.aborted) return;
  const head = h("div");
  const report = h("div", { "data-testid": "report" });
  const plot = h("div");
  const grid = h("div", { class: "grid", "data-testid": "curve-grid" });
  root.replaceChildren(
    head,
    annotations(`/sweeps/${id}`, sweep),
    h("section", {}, h("h2", {}, "Report"), report),
    h("section", {}, h("h2", {}, "Curves"), grid),
    h("section", {}, h("h2", {}, "Report plot"), plot),
  );
  const charts = new Map();
  signal.addEventListener("abort", () => charts.forEach((card) => card.chart.destroy()));

  for (;;) {
    head.replaceChildren(...headView(sweep).filter(Boolean));
    await showReport(report, plot, id, signal);
    await showCurves(grid, charts, sweep, signal);
    if (signal.aborted || TERMINAL.includes(sweep.status)) return;
    await sleep(REFRESH_MS, signal);
    if (signal.aborted) return;
    sweep = await get(`/sweeps/${id}`);
  }
}

function headView(sweep) {
  const progress = sweep.progress || {};
  const counts = Object.entries(sweep.counts || {})
    .filter(([, n]) => n)
    .map(([status, n]) => `${n} ${status}`)
    .join(" · ");
  const failed = (sweep.cells || []).filter((cell) => cell.error);
  return [
    h("h1", {}, `Sweep ${sweep.id} `, statusBadge(sweep.status)),
    h(
      "div",
      { class: "progress", "data-testid": "progress" },
      h("progress", { max: progress.steps_total || 1, value: progress.steps_done || 0 }),
      h("span", {}, `${counts} · ${count(progress.steps_done)} / ${count(progress.steps_total)} steps`),
    ),
    sweep.notice ? message("warning", sweep.notice) : null,
    ...failed.map((cell) =>
      h(
        "div",
        { class: "message error", "data-testid": "error" },
        h("a", { href: `#/experiments/${cell.id}` }, `#${cell.id}`),
        ` failed: ${cell.error}`,
      ),
    ),
    h("details", {}, h("summary", {}, "Sweep as posted"), h("pre", {}, JSON.stringify(sweep.spec, null, 2))),
  ];
}

async function showReport(report, plot, id, signal) {
  try {
    report.replaceChildren(reportTable(await get(`/sweeps/${id}/report`)));
  } catch (error) {
    const missing = error instanceof ApiError && error.missingRoute;
    report.replaceChildren(message("info", missing ? "This service has no sweep reports." : error.message));
  }
  const url = await imageUrl(`/sweeps/${id}/report.png`);
  if (signal.aborted) return;
  plot.replaceChildren(
    url
      ? h("img", { src: url, alt: "the sweep's curves, one panel per cell", class: "plot" })
      : h("p", { class: "muted" }, "No report plot."),
  );
}

// [heading, value of a row]: the report in the study's terms, plain next to bn.
const REPORT_COLUMNS = [
  ["plain test acc", (row) => accuracy(row.plain?.test_accuracy)],
  ["bn test acc", (row) => accuracy(row.bn?.test_accuracy)],
  ["bn − plain", (row) => signed(row.test_accuracy_gain)],
  ["verdict", (row) => row.verdict ?? "—"],
  ["plain steps to 0.90", (row) => steps(row.plain?.steps_to_90)],
  ["bn steps to 0.90", (row) => steps(row.bn?.steps_to_90)],
  ["speed-up to 0.90", (row) => (row.speedup_90 == null ? "—" : `${row.speedup_90.toFixed(1)}x`)],
  ["diverged", (row) => diverged(row)],
  ["seeds done", (row) => `${row.done ?? 0} / ${(row.experiment_ids || []).length}`],
  [
    "experiments",
    (row) => (row.experiment_ids || []).map((e) => h("a", { href: `#/experiments/${e}` }, `#${e} `)),
  ],
];

function reportTable(data) {
  if (!Array.isArray(data?.rows)) return h("pre", {}, JSON.stringify(data, null, 2));
  if (!data.rows.length) return h("p", { class: "muted" }, "No rows yet.");
  const columns = data.columns || [];
  return h(
    "div",
    {},
    data.complete === false
      ? h("p", { class: "muted" }, "Cells are still running: the table holds what is done.")
      : null,
    h(
      "table",
      { class: "list report" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          [...columns, ...REPORT_COLUMNS.map(([title]) => title)].map((t) => h("th", {}, t)),
        ),
      ),
      h(
        "tbody",
        {},
        data.rows.map((row) =>
          h(
            "tr",
            {},
            columns.map((c) => h("td", {}, String(row.values?.[c] ?? "—"))),
            REPORT_COLUMNS.map(([, value]) => h("td", {}, value(row))),
          ),
        ),
      ),
    ),
  );
}

function signed(value) {
  return value == null ? "—" : `${value >= 0 ? "+" : ""}${value.toFixed(3)}`;
}

function steps(value) {
  return value == null ? "—" : count(Math.round(value));
}

function diverged(row) {
  const parts = [];
  if (row.plain?.diverged) parts.push(`plain ${Math.round(row.plain.diverged * 100)}%`);
  if (row.bn?.diverged) parts.push(`bn ${Math.round(row.bn.diverged * 100)}%`);
  return parts.join(", ") || "no";
}

// One small chart per cell, labelled with its values; finished cells are not fetched again.
async function showCurves(grid, charts, sweep, signal) {
  const cells = (sweep.cells || []).slice(0, MOST_CURVES);
  if (!cells.length) {
    grid.replaceChildren(h("p", { class: "muted" }, "The sweep has no cells."));
    return;
  }
  for (const cell of cells) {
    if (signal.aborted) return;
    let card = charts.get(cell.id);
    if (card?.done) continue;
    if (!card) {
      const box = h("div", { class: "chart small" });
      const title = h("div", { class: "card-title" });
      grid.append(h("div", { class: "card", "data-experiment": cell.id }, title, box));
      card = { title, chart: new CurveChart(box, { height: 160, axes: false }) };
      charts.set(cell.id, card);
    }
    const values = Object.entries(cell.values || {}).map(([name, value]) => `${name} ${value}`);
    card.title.replaceChildren(
      h("a", { href: `#/experiments/${cell.id}` }, `#${cell.id}`),
      " ",
      statusBadge(cell.status),
      h("div", { class: "muted" }, values.join(" · ")),
    );
    card.chart.setTotal(cell.progress?.total);
    card.chart.replace((await get(`/experiments/${cell.id}/curve`)).series);
    card.done = TERMINAL.includes(cell.status);
  }
  if ((sweep.cells || []).length > MOST_CURVES && !grid.dataset.truncated) {
    grid.dataset.truncated = "yes";
    grid.append(
      h("p", { class: "muted" }, `Showing the first ${MOST_CURVES} of ${sweep.cells.length} cells.`),
    );
  }
}
