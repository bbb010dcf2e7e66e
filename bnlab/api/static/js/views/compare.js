// Experiments side by side (GET /compare): every net's curve on one chart, labelled with only the
// spec fields that differ, and their results in one table. The page's state is its URL,
// `#/compare?experiments=1,4,9&variants=bn`, so a view is shared by sending the link.

import { get, imageUrl } from "../api.js";
import { accuracy, count, h, statusBadge } from "../dom.js";
import { vocabulary } from "../vocabulary.js";

const PALETTE = ["#00798c", "#d1495b", "#edae49", "#66a182", "#2e4057", "#8d96a3", "#7b2cbf", "#e07a5f"];
// A line style per variant, as compare.png draws them: the study's pair dashed and solid, the
// others in the service's order.
const DASH = { plain: [6, 4], bn: [] };
const OTHER_DASHES = [[8, 3, 2, 3], [1, 3], [5, 1, 1, 1], [10, 3, 1, 3, 1, 3]];

function dashOf(variant, order) {
  if (DASH[variant]) return DASH[variant];
  const others = order.filter((v) => !DASH[v]);
  return OTHER_DASHES[Math.max(0, others.indexOf(variant)) % OTHER_DASHES.length];
}

export async function compareView(root, signal, params) {
  const ids = params.get("experiments") || "";
  const [comparison, { variants: order }] = await Promise.all([
    get(`/compare?${new URLSearchParams({ experiments: ids })}`),
    vocabulary(),
  ]);
  if (signal.aborted) return;
  const variants = [...new Set(comparison.legend.map((net) => net.variant))];
  const shown = new Set(params.get("variants")?.split(",").filter((v) => variants.includes(v)) ?? variants);
  const chartBox = h("div", { class: "chart", "data-testid": "compare-chart" });
  const png = h("p");
  root.replaceChildren(
    h("h1", {}, "Side by side"),
    h(
      "p",
      { class: "spec", "data-testid": "differing" },
      comparison.differing.length
        ? `What differs: ${comparison.differing.join(", ")}`
        : "These experiments have the same spec.",
    ),
    idsForm(ids),
    variantPicker(variants, shown, params),
    h("section", {}, chartBox),
    h("section", {}, h("h2", {}, "Results"), resultsTable(comparison, shown)),
    png,
  );
  const plot = chart(chartBox, comparison, shown, order);
  signal.addEventListener("abort", () => plot.destroy());
  window.bnlab = { compare: comparison, plot };
  const url = await imageUrl(`/compare.png?${new URLSearchParams({ experiments: ids })}`);
  if (url && !signal.aborted) png.replaceChildren(h("a", { href: url, download: "compare.png" }, "The plot as PNG"));
}

function idsForm(ids) {
  const field = h("input", { name: "experiments", value: ids, "aria-label": "experiment ids" });
  return h(
    "form",
    {
      class: "inline",
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = `#/compare?${new URLSearchParams({ experiments: field.value.replace(/\s+/g, "") })}`;
      },
    },
    h("label", {}, "Experiments ", field),
    h("button", { type: "submit", class: "secondary" }, "Compare"),
  );
}

function variantPicker(variants, shown, params) {
  const toggle = (variant) => (event) => {
    const next = new Set(shown);
    if (event.target.checked) next.add(variant);
    else next.delete(variant);
    const query = new URLSearchParams(params);
    query.set("variants", variants.filter((v) => next.has(v)).join(","));
    location.hash = `#/compare?${query}`;
  };
  return h(
    "p",
    { class: "toolbar", "data-testid": "variants" },
    variants.map((variant) =>
      h(
        "label",
        {},
        h("input", { type: "checkbox", name: variant, checked: shown.has(variant), onchange: toggle(variant) }),
        ` ${variant}`,
      ),
    ),
  );
}

function chart(container, comparison, shown, order) {
  const nets = comparison.legend.filter((net) => shown.has(net.variant));
  const byId = new Map(comparison.experiments.map((e, index) => [e.id, { ...e, color: PALETTE[index % 8] }]));
  const steps = [...new Set(nets.flatMap((net) => byId.get(net.experiment_id).series[net.variant]?.step || []))];
  steps.sort((a, b) => a - b);
  const columns = nets.map((net) => {
    const series = byId.get(net.experiment_id).series[net.variant] || { step: [], val_accuracy: [] };
    const at = new Map(series.step.map((step, i) => [step, series.val_accuracy[i]]));
    return steps.map((step) => at.get(step) ?? null);
  });
  container.dataset.lines = String(nets.length);
  const options = {
    width: Math.max(240, container.clientWidth),
    height: 360,
    scales: { x: { time: false }, y: { range: [0, 1] } },
    series: [
      { label: "step" },
      ...nets.map((net) => ({
        label: net.label,
        stroke: byId.get(net.experiment_id).color,
        dash: dashOf(net.variant, order),
        width: 2,
        spanGaps: true,
        value: (_, v) => (v == null ? "—" : v.toFixed(3)),
      })),
    ],
    axes: [{ label: "training step" }, { label: "validation accuracy" }],
  };
  return new uPlot(options, [steps, ...columns], container);
}

const COLUMNS = [
  ["final val acc", "final_val_accuracy", accuracy],
  ["test acc", "test_accuracy", accuracy],
  ["test acc, batch stats", "test_accuracy_batch_stats", accuracy],
  ["steps to 0.90", "steps_to_90", count],
  ["steps to 0.95", "steps_to_95", count],
  ["diverged at", "diverged_at_step", count],
];

function resultsTable(comparison, shown) {
  const status = new Map(comparison.experiments.map((e) => [e.id, e.status]));
  const rows = comparison.table
    .filter((row) => shown.has(row.variant))
    .map((row) =>
      h(
        "tr",
        { "data-net": `${row.experiment_id}-${row.variant}` },
        h("td", {}, h("a", { href: `#/experiments/${row.experiment_id}` }, row.label)),
        h("td", {}, statusBadge(status.get(row.experiment_id))),
        COLUMNS.map(([, key, format]) => h("td", { class: "number" }, format(row[key]))),
      ),
    );
  return h(
    "table",
    { class: "list", "data-testid": "compare-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "net"), h("th", {}, "status"), COLUMNS.map(([t]) => h("th", {}, t)))),
    h("tbody", {}, rows),
  );
}
