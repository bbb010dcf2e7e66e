// One experiment: status and progress, why it failed, every variant's curve (live while it runs),
// their results side by side, activation plots when the service has them, and the collapse demo.

import { get, imageUrl, post } from "../api.js";
import { annotations } from "../annotations.js";
import { collapseDemo } from "../collapse.js";
import { CurveChart, follow } from "../curve.js";
import { accuracy, count, describeSpec, h, message, progressBar, statusBadge, TERMINAL } from "../dom.js";
import { inOrder, vocabulary } from "../vocabulary.js";
import { whyPanels } from "../why.js";

const RESULTS = [
  ["final validation accuracy", "final_val_accuracy", accuracy],
  ["test accuracy (population statistics)", "test_accuracy", accuracy],
  ["test accuracy with batch statistics", "test_accuracy_batch_stats", accuracy],
  ["steps to 0.90 validation accuracy", "steps_to_90", reached],
  ["steps to 0.95 validation accuracy", "steps_to_95", reached],
  ["diverged at step", "diverged_at_step", (step, done) => (step == null && done ? "no" : count(step))],
];

function reached(step, done) {
  return step == null && done ? "not reached" : count(step);
}

export async function experimentView(root, signal, id) {
  let [experiment, { variants: order, defaultVariants }] = await Promise.all([
    get(`/experiments/${id}`),
    vocabulary(),
  ]);
  if (signal.aborted) return; // the user has gone elsewhere meanwhile
  const head = h("div", { class: "head" });
  const notes = h("div");
  // Rendered once: progress updates redraw the head, never a note being edited.
  const annotated = annotations(`/experiments/${id}`, experiment);
  const progress = h("div");
  const results = h("div");
  const after = h("div");
  const chartBox = h("div", { class: "chart", "data-testid": "curve" });
  const why = h("div");
  root.replaceChildren(
    head,
    annotated,
    notes,
    progress,
    h("section", {}, h("h2", {}, "Validation accuracy"), chartBox),
    why,
    h("section", {}, h("h2", {}, "Results"), results),
    after,
  );
  // The nets it trains: an experiment stored before `variants` existed trained the default pair.
  const variants = inOrder(experiment.spec.variants ?? defaultVariants, order);
  const chart = new CurveChart(chartBox, { variants, order });
  signal.addEventListener("abort", () => chart.destroy());
  // The curve as drawn, for the curious and for the browser test.
  window.bnlab = { chart };

  let trouble = null;
  let finishedShown = false;
  const show = (latest) => {
    experiment = latest;
    chart.setTotal(experiment.progress.total || experiment.spec.training_batches);
    head.replaceChildren(...headView(experiment, show).filter(Boolean));
    notes.replaceChildren(...notesView(experiment, trouble));
    progress.replaceChildren(progressBar(experiment.progress));
    chart.setDiverged(experiment.results);
    results.replaceChildren(resultsTable(experiment, variants));
    if (TERMINAL.includes(experiment.status) && !finishedShown) {
      finishedShown = true;
      showFinished(after, experiment, signal);
      showWhy(why, experiment.id, (variant) => chart.color(variant), signal);
    }
  };
  show(experiment);
  if (TERMINAL.includes(experiment.status)) {
    chart.replace((await get(`/experiments/${id}/curve`)).series);
    return;
  }
  after.replaceChildren(message("info", "The nets answer predictions once the experiment has succeeded."));
  await follow(
    id,
    {
      onCurve: (series) => chart.replace(series),
      onPoint: (variant, step, value) => chart.add(variant, step, value),
      onProgress: ({ status, ...rest }) =>
        show({
          ...experiment,
          status: status || experiment.status,
          progress: { ...experiment.progress, ...rest },
        }),
      onExperiment: show,
      onTrouble: (text) => {
        trouble = text;
        notes.replaceChildren(...notesView(experiment, trouble));
      },
    },
    signal,
  );
}

function headView(experiment, show) {
  const cancel = async (event) => {
    event.target.disabled = true;
    try {
      show(await post(`/experiments/${experiment.id}/cancel`));
    } catch (error) {
      event.target.replaceWith(message("error", error.message));
    }
  };
  const cancellable = !TERMINAL.includes(experiment.status) && !experiment.cancel_requested;
  return [
    h("h1", {}, `Experiment ${experiment.id} `, statusBadge(experiment.status)),
    h(
      "p",
      { class: "spec" },
      describeSpec(experiment.spec),
      experiment.sweep_id
        ? h("a", { href: `#/sweeps/${experiment.sweep_id}` }, ` · sweep ${experiment.sweep_id}`)
        : null,
      cancellable ? h("button", { type: "button", class: "secondary", onclick: cancel }, "Cancel") : null,
    ),
    lineageView(experiment),
    h("details", {}, h("summary", {}, "Full spec"), h("pre", {}, JSON.stringify(experiment.spec, null, 2))),
  ];
}

// Where a fork comes from and what it changed ("forked from #3 at step 1000: learning_rate
// 0.01 → 0.5"), and the forks made from it; nothing for an experiment that is neither.
function lineageView(experiment) {
  const link = (id) => h("a", { href: `#/experiments/${id}` }, `#${id}`);
  const parts = [];
  const parent = experiment.parent;
  if (parent) {
    const changes = Object.entries(parent.changes).map(
      ([field, change]) => `${field} ${JSON.stringify(change.parent)} → ${JSON.stringify(change.fork)}`,
    );
    parts.push(
      "forked from ",
      parent.id == null ? "a deleted experiment" : link(parent.id),
      ` at step ${count(parent.step)}: ${changes.join("; ") || "no changes"}`,
    );
  }
  const forks = experiment.forks || [];
  if (forks.length) {
    if (parts.length) parts.push(" · ");
    parts.push("forks: ", ...forks.flatMap((id, i) => (i ? [", ", link(id)] : [link(id)])));
  }
  return parts.length ? h("p", { class: "lineage", "data-testid": "lineage" }, ...parts) : null;
}

function notesView(experiment, trouble) {
  const notes = [];
  if (experiment.status === "failed") {
    notes.push(
      h(
        "div",
        { class: "message error", "data-testid": "error" },
        h("strong", {}, "Failed: "),
        experiment.error || "the worker gave no reason",
      ),
    );
  }
  if (experiment.cancel_requested && !TERMINAL.includes(experiment.status)) {
    notes.push(message("info", "Cancel requested: it stops at its next sample point."));
  }
  if (experiment.notice) notes.push(message("warning", experiment.notice));
  if (trouble) notes.push(message("warning", trouble));
  return notes;
}

function resultsTable(experiment, variants) {
  // "not reached" and "no" only once there is a whole run to say it of.
  const done = experiment.status === "succeeded";
  const rows = RESULTS.map(([label, key, format]) =>
    h(
      "tr",
      { "data-result": key },
      h("th", {}, label),
      ...variants.map((variant) =>
        h("td", { "data-variant": variant }, format(experiment.results[variant]?.[key], done)),
      ),
    ),
  );
  return h(
    "table",
    { class: "results", "data-testid": "results" },
    h(
      "thead",
      {},
      h("tr", {}, h("th", {}), variants.map((variant) => h("th", { "data-variant": variant }, variant))),
    ),
    h("tbody", {}, rows),
  );
}

// The why-BN-helps panels under the curves, when the experiment's probes measured anything.
async function showWhy(box, id, color, signal) {
  const panels = await whyPanels(id, color).catch(() => null);
  if (panels && !signal.aborted) box.replaceChildren(panels);
}

async function showFinished(after, experiment, signal) {
  const parts = [];
  if (experiment.status === "succeeded") parts.push(collapseDemo(experiment.id, Object.keys(experiment.results)));
  else parts.push(message("info", `No trained nets to ask: the experiment ${experiment.status}.`));
  after.replaceChildren(...parts);
  // Activation percentiles, plotted by the service, when it recorded any; nothing shows otherwise.
  const stats = await get(`/experiments/${experiment.id}/activations`).catch(() => null);
  const recorded = Object.values(stats?.variants || {}).some((layers) => layers.length);
  if (!recorded || signal.aborted) return;
  const plot = await imageUrl(`/experiments/${experiment.id}/activations.png`);
  if (plot && !signal.aborted) {
    after.append(
      h(
        "section",
        { "data-testid": "activations" },
        h("h2", {}, "Activations (percentiles per hidden layer)"),
        h("img", { src: plot, alt: "activation percentiles of the plain and bn nets", class: "plot" }),
      ),
    );
  }
}
