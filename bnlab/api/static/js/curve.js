// Every variant's validation-accuracy curve, drawn with uPlot (vendored), with a legend and a
// mark where a net diverged, kept up to date from the experiment's event stream, or by polling
// /curve once a second where the stream is not there.

import { authHeaders, get } from "./api.js";
import { count, h, TERMINAL } from "./dom.js";
import { readEvents } from "./events.js";
import { inOrder, variantColor } from "./vocabulary.js";

export class CurveChart {
  // variants: the nets to draw from the start (more are added as their points arrive); order:
  // every variant the service knows, in its order (vocabulary().variants), for the colours.
  constructor(container, { variants = [], order = variants, height = 320, axes = true } = {}) {
    this.container = container;
    this.height = height;
    this.axes = axes;
    this.order = order;
    // step -> validation accuracy, per variant: a replayed point overwrites, never duplicates.
    this.points = new Map(inOrder(variants, order).map((variant) => [variant, new Map()]));
    // variant -> the step its loss turned non-finite
    this.diverged = new Map();
    this.build();
    this.resize = () => this.plot.setSize(this.size());
    window.addEventListener("resize", this.resize);
    this.container.dataset.points = "0";
  }

  get variants() {
    return [...this.points.keys()];
  }

  build() {
    this.plot?.destroy();
    this.plot = new uPlot(this.options(), this.data(), this.container);
    // Each legend entry in its line's colour, and named for the page's tests.
    const entries = this.plot.root.querySelectorAll(".u-legend .u-series");
    this.variants.forEach((variant, i) => {
      const entry = entries[i + 1]; // the first is the x axis
      if (!entry) return;
      entry.dataset.variant = variant;
      entry.querySelector(".u-label").style.color = this.color(variant);
    });
  }

  color(variant) {
    return variantColor(variant, this.order);
  }

  size() {
    return { width: Math.max(240, this.container.clientWidth), height: this.height };
  }

  options() {
    const line = (variant) => ({
      label: variant,
      stroke: this.color(variant),
      width: 2,
      spanGaps: true,
      points: { show: true, size: 5, fill: this.color(variant) },
      value: (_, v) => (v == null ? "—" : v.toFixed(3)),
    });
    return {
      ...this.size(),
      // x from 0 to the run's length once known: a running curve fills the chart as it grows.
      scales: {
        x: { time: false, range: (_, min, max) => [0, Math.max(this.total || 0, max || 1)] },
        y: { range: [0, 1] },
      },
      series: [{ label: "step" }, ...this.variants.map(line)],
      axes: this.axes
        ? [{ label: "training step" }, { label: "validation accuracy" }]
        : [{ size: 24 }, { size: 40 }],
      legend: { show: this.axes },
      cursor: { show: this.axes },
      // Redrawn with the plot, so they follow its scale and size.
      hooks: { draw: [(plot) => this.drawDiverged(plot)] },
    };
  }

  setTotal(total) {
    if (total === this.total) return;
    this.total = total;
    this.redraw();
  }

  add(variant, step, accuracy) {
    this.series(variant).set(step, accuracy);
    this.redraw();
  }

  // series as GET /experiments/{id}/curve gives it: {plain: {step: [...], val_accuracy: [...]}, ...}
  replace(series) {
    for (const [variant, { step = [], val_accuracy = [] }] of Object.entries(series)) {
      const points = this.series(variant);
      for (let i = 0; i < step.length; i++) points.set(step[i], val_accuracy[i]);
    }
    this.redraw();
  }

  // results as GET /experiments/{id} gives them: {plain: {diverged_at_step, ...}, ...}
  setDiverged(results) {
    const diverged = Object.entries(results || {}).filter(([, r]) => r?.diverged_at_step != null);
    const key = (entries) => JSON.stringify(entries);
    const next = diverged.map(([variant, r]) => [variant, r.diverged_at_step]);
    if (key(next) === key([...this.diverged])) return;
    for (const [variant] of next) this.series(variant);
    this.diverged = new Map(next);
    this.redraw();
  }

  // A variant's points, drawn from now on: a variant new to the chart rebuilds it with its line.
  series(variant) {
    if (!this.points.has(variant)) {
      const points = new Map([...this.points, [variant, new Map()]]);
      this.points = new Map(inOrder([...points.keys()], this.order).map((v) => [v, points.get(v)]));
      this.rebuild = true;
    }
    return this.points.get(variant);
  }

  data() {
    const variants = this.variants;
    const steps = [...new Set(variants.flatMap((v) => [...this.points.get(v).keys()]))];
    steps.sort((a, b) => a - b);
    return [steps, ...variants.map((v) => steps.map((step) => this.points.get(v).get(step) ?? null))];
  }

  count() {
    return this.variants.reduce((total, v) => total + this.points.get(v).size, 0);
  }

  redraw() {
    // Points can arrive in bursts (a stream replaying a long run): draw once per frame.
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = null;
      if (this.rebuild) {
        this.rebuild = false;
        this.build();
      } else this.plot.setData(this.data());
      this.container.dataset.points = String(this.count());
    });
  }

  // A diverged net is marked where it diverged: a dashed line in its colour at that step, named
  // on the big chart. Without it a net that diverged before its first sample point would simply
  // have no line, which reads as missing.
  drawDiverged(plot) {
    plot.over.querySelectorAll(".diverged").forEach((mark) => mark.remove());
    [...this.diverged].forEach(([variant, step], i) => {
      const label = this.axes ? `${variant} diverged at step ${count(step)}` : `✕ ${variant}`;
      const mark = h(
        "div",
        {
          class: "diverged",
          "data-testid": "diverged",
          "data-variant": variant,
          "data-step": step,
          title: `${variant} diverged at step ${count(step)}: its loss turned non-finite`,
          style: `left: ${plot.valToPos(step, "x")}px; border-color: ${this.color(variant)}`,
        },
        h("span", { style: `top: ${i * 1.4}em; color: ${this.color(variant)}` }, label),
      );
      plot.over.append(mark);
    });
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    if (this.pending) cancelAnimationFrame(this.pending);
    this.plot.destroy();
  }
}

// The colours of the small charts, which have no legend of their own.
export function legendKey(variants, order) {
  return h(
    "p",
    { class: "legend-key", "data-testid": "legend-key" },
    inOrder(variants, order).map((variant) =>
      h("span", { "data-variant": variant, style: `color: ${variantColor(variant, order)}` }, `━ ${variant}`),
    ),
  );
}

// Follow a queued or running experiment until it finishes. handlers: onCurve(series),
// onPoint(variant, step, accuracy), onProgress(progress with status), onExperiment(experiment),
// onTrouble(text or null).
export async function follow(id, handlers, signal) {
  // What is stored so far first: a page opened mid-run shows the curve at once.
  handlers.onCurve((await get(`/experiments/${id}/curve`)).series);
  let finished = false;
  try {
    await readEvents(
      `/experiments/${id}/events`,
      authHeaders(),
      (event) => {
        const data = event.data;
        if (event.type === "point") handlers.onPoint(data.variant, data.step, data.val_accuracy);
        else if (event.type === "progress") handlers.onProgress(data);
        else if (event.type === "status") {
          finished = true;
          handlers.onExperiment(data);
        }
      },
      signal,
    );
  } catch (error) {
    if (signal.aborted) return;
    console.info(`bnlab: polling instead of streaming (${error.message})`);
  }
  // No stream here, or it broke off before the end: polling picks up whatever was missed.
  if (!finished && !signal.aborted) await poll(id, handlers, signal);
}

async function poll(id, handlers, signal) {
  while (!signal.aborted) {
    try {
      const [experiment, curve] = await Promise.all([
        get(`/experiments/${id}`),
        get(`/experiments/${id}/curve`),
      ]);
      if (signal.aborted) return;
      handlers.onTrouble(null);
      handlers.onCurve(curve.series);
      handlers.onExperiment(experiment);
      if (TERMINAL.includes(experiment.status)) return;
    } catch (error) {
      handlers.onTrouble(`Lost touch with the service, retrying: ${error.message}`);
    }
    await sleep(1000, signal);
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
