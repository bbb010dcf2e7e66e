// A sweep: its status and progress, the report table (GET /sweeps/{id}/report), the report's curve
// plot (report.png), and a grid of its cells' curves. Refreshed until every cell has finished.

import { ApiError, get, imageUrl } from "../api.js";
import { annotations } from "../annotations.js";
import { CurveChart, legendKey, sleep } from "../curve.js";
import { accuracy, count, h, message, statusBadge, TERMINAL } from "../dom.js";
import { inOrder, variantColor, vocabulary } from "../vocabulary.js";

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
  const { variants: order } = await vocabulary();
  if (signal.aborted) return;
  const head = h("div");
  const report = h("div", { "data-testid": "report" });
  const plot = h("div");
  const grid = h("div", { class: "grid", "data-testid": "curve-grid" });
  const key = h("div");
  root.replaceChildren(
    head,
    annotations(`/sweeps/${id}`, sweep),
    h("section", {}, h("h2", {}, "Report"), report),
    h("section", {}, h("h2", {}, "Curves"), key, grid),
    h("section", {}, h("h2", {}, "Report plot"), plot),
  );
  const charts = new Map();
  signal.addEventListener("abort", () => charts.forEach((card) => card.chart.destroy()));

  for (;;) {
    head.replaceChildren(...headView(sweep).filter(Boolean));
    await showReport(report, plot, id, signal, order);
    await showCurves(grid, charts, sweep, signal, order);
    const drawn = new Set([...charts.values()].flatMap((card) => card.chart.variants));
    key.replaceChildren(drawn.size ? legendKey([...drawn], order) : "");
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

async function showReport(report, plot, id, signal, order) {
  try {
    report.replaceChildren(reportTable(await get(`/sweeps/${id}/report`), order));
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

// The report, a block of lines per row (a sweep's cell, or its seeds together): one line per
// variant, so the table keeps its width whatever number of variants the cells trained. The
// row's values stick to the left when a wide grid still scrolls sideways inside its box.
const PER_VARIANT = [
  ["test acc", (summary) => withSpread(summary.test_accuracy, summary.test_accuracy_std)],
  ["steps to 0.90", (summary) => steps(summary.steps_to_90)],
  ["diverged", (summary, row) => diverged(summary, row.done)],
];
const AGAINST = [
  ["± test acc", (comparison) => signed(comparison.test_accuracy_gain)],
  ["verdict", (comparison) => comparison.verdict ?? "—"],
  ["speed-up to 0.90", (comparison) => (comparison.speedup_90 == null ? "—" : `${comparison.speedup_90.toFixed(1)}x`)],
];
// Where the cells ran probes (the why preset): each variant's medians over the probed steps.
const WHY = [
  ["β-smoothness", (why) => precise(why?.beta_smoothness)],
  ["sharpness", (why) => precise(why?.sharpness)],
];

function precise(value) {
  return value == null ? "—" : value.toPrecision(3);
}

function reportTable(data, order) {
  if (!Array.isArray(data?.rows)) return h("pre", {}, JSON.stringify(data, null, 2));
  if (!data.rows.length) return h("p", { class: "muted" }, "No rows yet.");
  const columns = data.columns || [];
  const probed = data.rows.some((row) => Object.keys(row.why || {}).length);
  const headings = [
    ...columns.map(fieldName),
    "variant",
    ...PER_VARIANT.map(([title]) => title),
    ...(probed ? WHY.map(([title]) => title) : []),
    ...AGAINST.map(([title]) => `${title} vs reference`),
    "seeds done",
    "experiments",
  ];
  return h(
    "div",
    {},
    data.complete === false
      ? h("p", { class: "muted" }, "Cells are still running: the table holds what is done.")
      : null,
    h(
      "div",
      { class: "table-scroll", "data-testid": "report-scroll" },
      h(
        "table",
        { class: "list report" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            headings.map((title, i) => h("th", { class: i === 0 ? "sticky" : null }, title)),
          ),
        ),
        data.rows.map((row) => reportRows(row, columns, order, probed)),
      ),
    ),
  );
}

function reportRows(row, columns, order, probed) {
  const variants = inOrder(Object.keys(row.variants || {}), order);
  const span = { rowspan: variants.length };
  return h(
    "tbody",
    { "data-row": (row.experiment_ids || []).join(",") },
    variants.map((variant, line) => {
      const first = line === 0;
      const against = variant === row.against;
      const comparison = row.comparisons?.[variant] || {};
      return h(
        "tr",
        { "data-variant": variant },
        first
          ? columns.map((c, i) => h("td", { ...span, class: i === 0 ? "sticky" : null }, shown(row.values?.[c])))
          : null,
        h(
          "td",
          { class: columns.length ? "variant" : "variant sticky", style: `color: ${variantColor(variant, order)}` },
          variant,
        ),
        PER_VARIANT.map(([, value]) => h("td", { class: "number" }, value(row.variants[variant], row))),
        probed ? WHY.map(([, value]) => h("td", { class: "number" }, value(row.why?.[variant]))) : null,
        against
          ? h("td", { colspan: AGAINST.length, class: "muted" }, "reference")
          : AGAINST.map(([, value]) => h("td", { class: "number" }, value(comparison))),
        first ? h("td", { ...span, class: "number" }, `${row.done ?? 0} / ${(row.experiment_ids || []).length}`) : null,
        first
          ? h(
              "td",
              span,
              (row.experiment_ids || []).map((e) => h("a", { href: `#/experiments/${e}` }, `#${e} `)),
            )
          : null,
      );
    }),
  );
}

// A field's name as the API spells it, free to wrap at its underscores.
function fieldName(name) {
  return name.split("_").flatMap((part, i) => (i ? ["_", h("wbr"), part] : [part]));
}

function shown(value) {
  if (value === null || value === undefined) return "—";
  if (Array.isArray(value)) return value.join(", ");
  return typeof value === "number" ? count(value) : String(value);
}

function withSpread(value, std) {
  return std == null ? accuracy(value) : `${accuracy(value)} ±${std.toFixed(3)}`;
}

function signed(value) {
  return value == null ? "—" : `${value >= 0 ? "+" : ""}${value.toFixed(3)}`;
}

function steps(value) {
  return value == null ? "—" : count(Math.round(value));
}

// "at 37" for one seed; over several, how many diverged and the earliest step.
function diverged(summary, done) {
  if (!summary.diverged) return summary.diverged === 0 ? "no" : "—";
  const at = `at ${count(summary.diverged_at_step)}`;
  return done > 1 ? `${Math.round(summary.diverged * done)} of ${done}, first ${at}` : at;
}

// One small chart per cell, labelled with its values, its diverged nets marked once it has
// finished; finished cells are not fetched again.
async function showCurves(grid, charts, sweep, signal, order) {
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
      card = { title, chart: new CurveChart(box, { height: 160, axes: false, order }) };
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
    if (card.done) card.chart.setDiverged((await get(`/experiments/${cell.id}`)).results);
  }
  if ((sweep.cells || []).length > MOST_CURVES && !grid.dataset.truncated) {
    grid.dataset.truncated = "yes";
    grid.append(
      h("p", { class: "muted" }, `Showing the first ${MOST_CURVES} of ${sweep.cells.length} cells.`),
    );
  }
}
