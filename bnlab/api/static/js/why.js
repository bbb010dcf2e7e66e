// Why BN helps, measured on this run (GET /experiments/{id}/landscape, /ics, /sharpness): the
// loss band along the gradient, beta-smoothness, sharpness against 2/lr and the covariate shift
// per layer, each a small uPlot chart with a line per variant. Nothing shows for an experiment
// whose probes were off.

import { get } from "./api.js";
import { h } from "./dom.js";

const HEIGHT = 220;

// color(variant): the curve chart's colour for it, so a net looks the same in every chart.
export async function whyPanels(experimentId, color) {
  const [landscape, ics, sharpness] = await Promise.all(
    ["landscape", "ics", "sharpness"].map((what) => get(`/experiments/${experimentId}/${what}`)),
  );
  const charts = [];
  if (landscape.measured) {
    charts.push(lossBand(landscape, color), betaSmoothness(landscape, color));
  }
  if (sharpness.measured) charts.push(sharpnessChart(sharpness, color));
  if (ics.measured) charts.push(...shiftCharts(ics, color));
  if (!charts.length) return null;
  return h(
    "section",
    { "data-testid": "why" },
    h("h2", {}, "Why BN helps, measured"),
    h(
      "p",
      { class: "hint" },
      `Every ${landscape.every}th sample point, per net (Santurkar et al. 2018; Cohen et al. 2021).`,
    ),
    h("div", { style: "display: flex; flex-wrap: wrap; gap: 1rem" }, charts),
  );
}

// One chart: x the probed steps of every variant, a series per entry of `lines`
// ({label, variant, steps, values, dash}); optional log y.
function chart(name, lines, color, { log = false, extra = [] } = {}) {
  const box = h("div", { "data-chart": name });
  const steps = [...new Set(lines.flatMap((line) => line.steps))].sort((a, b) => a - b);
  const at = (line) => {
    const byStep = new Map(line.steps.map((step, i) => [step, line.values[i]]));
    // log axes cannot show zero or below: those points are left out, not drawn at the floor
    return steps.map((step) => {
      const value = byStep.get(step) ?? null;
      return log && value != null && value <= 0 ? null : value;
    });
  };
  const all = [...lines, ...extra];
  const data = [steps, ...all.map((line) => (line.constant != null ? steps.map(() => line.constant) : at(line)))];
  const series = [
    { label: "step" },
    ...all.map((line) => ({
      label: line.label,
      stroke: line.variant ? color(line.variant) : "#333",
      dash: line.dash,
      width: 2,
      spanGaps: true,
      points: { show: !line.constant, size: 4 },
      value: (_, v) => (v == null ? "—" : v.toPrecision(3)),
    })),
  ];
  const options = {
    title: name,
    width: 420,
    height: HEIGHT,
    scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
    series,
    axes: [{ label: "training step" }, {}],
  };
  box.dataset.series = String(all.length);
  box.dataset.points = String(lines.reduce((total, line) => total + line.values.filter((v) => v != null).length, 0));
  requestAnimationFrame(() => new uPlot(options, data, box));
  return box;
}

function lossBand(landscape, color) {
  const lines = Object.entries(landscape.variants).flatMap(([variant, s]) => [
    { label: `${variant} min`, variant, steps: s.step, values: s.loss_min },
    { label: `${variant} max`, variant, steps: s.step, values: s.loss_max, dash: [4, 3] },
  ]);
  return chart("loss along the gradient (min..max over step sizes)", lines, color, { log: true });
}

function betaSmoothness(landscape, color) {
  const lines = Object.entries(landscape.variants).map(([variant, s]) => ({
    label: variant,
    variant,
    steps: s.step,
    values: s.beta_smoothness,
  }));
  return chart("effective beta-smoothness", lines, color, { log: true });
}

function sharpnessChart(sharpness, color) {
  const lines = Object.entries(sharpness.variants).map(([variant, s]) => ({
    label: variant,
    variant,
    steps: s.step,
    values: s.eigenvalue,
  }));
  const edge = { label: `2/lr = ${sharpness.edge.toPrecision(3)}`, constant: sharpness.edge, dash: [6, 4] };
  return chart("sharpness (top Hessian eigenvalue)", lines, color, { log: true, extra: [edge] });
}

function shiftCharts(ics, color) {
  const dashes = [undefined, [6, 3], [2, 2], [8, 2, 2, 2], [1, 3]];
  const lines = (field) =>
    Object.entries(ics.variants).flatMap(([variant, layers]) =>
      layers.map((layer) => ({
        label: `${variant} layer ${layer.layer + 1}`,
        variant,
        steps: layer.step,
        values: layer[field],
        dash: dashes[layer.layer % dashes.length],
      })),
    );
  return [
    chart("covariate shift ||G - G'|| per layer", lines("norm"), color, { log: true }),
    chart("covariate shift cos(G, G') per layer", lines("cosine"), color),
  ];
}
