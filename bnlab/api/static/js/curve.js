// Both nets' validation-accuracy curves, drawn with uPlot (vendored), kept up to date from the
// experiment's event stream, or by polling /curve once a second where the stream is not there.

import { authHeaders, get } from "./api.js";
import { TERMINAL } from "./dom.js";
import { readEvents } from "./events.js";

export const VARIANTS = ["plain", "bn"];
export const COLORS = { plain: "#d1495b", bn: "#00798c" };

export class CurveChart {
  constructor(container, { height = 320, axes = true } = {}) {
    this.container = container;
    this.height = height;
    // step -> validation accuracy, per variant: a replayed point overwrites, never duplicates.
    this.points = { plain: new Map(), bn: new Map() };
    this.plot = new uPlot(this.options(axes), this.data(), container);
    this.resize = () => this.plot.setSize(this.size());
    window.addEventListener("resize", this.resize);
    this.container.dataset.points = "0";
  }

  size() {
    return { width: Math.max(240, this.container.clientWidth), height: this.height };
  }

  options(axes) {
    const line = (variant) => ({
      label: variant,
      stroke: COLORS[variant],
      width: 2,
      spanGaps: true,
      points: { show: true, size: 5, fill: COLORS[variant] },
      value: (_, v) => (v == null ? "—" : v.toFixed(3)),
    });
    return {
      ...this.size(),
      // x from 0 to the run's length once known: a running curve fills the chart as it grows.
      scales: {
        x: { time: false, range: (_, min, max) => [0, Math.max(this.total || 0, max || 1)] },
        y: { range: [0, 1] },
      },
      series: [{ label: "step" }, line("plain"), line("bn")],
      axes: axes
        ? [{ label: "training step" }, { label: "validation accuracy" }]
        : [{ size: 24 }, { size: 40 }],
      legend: { show: axes },
      cursor: { show: axes },
    };
  }

  setTotal(total) {
    if (total === this.total) return;
    this.total = total;
    this.redraw();
  }

  add(variant, step, accuracy) {
    if (!this.points[variant]) return;
    this.points[variant].set(step, accuracy);
    this.redraw();
  }

  // series as GET /experiments/{id}/curve gives it: {plain: {step: [...], val_accuracy: [...]}, bn}
  replace(series) {
    for (const variant of VARIANTS) {
      const { step = [], val_accuracy = [] } = series[variant] || {};
      for (let i = 0; i < step.length; i++) this.points[variant].set(step[i], val_accuracy[i]);
    }
    this.redraw();
  }

  data() {
    const steps = [...new Set(VARIANTS.flatMap((v) => [...this.points[v].keys()]))];
    steps.sort((a, b) => a - b);
    return [steps, ...VARIANTS.map((v) => steps.map((step) => this.points[v].get(step) ?? null))];
  }

  count() {
    return VARIANTS.reduce((total, v) => total + this.points[v].size, 0);
  }

  redraw() {
    // Points can arrive in bursts (a stream replaying a long run): draw once per frame.
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = null;
      this.plot.setData(this.data());
      this.container.dataset.points = String(this.count());
    });
  }

  destroy() {
    window.removeEventListener("resize", this.resize);
    if (this.pending) cancelAnimationFrame(this.pending);
    this.plot.destroy();
  }
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
