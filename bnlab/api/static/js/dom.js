// Building the page. Text from the service (error reasons, specs) goes in as text nodes, never
// as HTML.

export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function message(kind, text) {
  return h("div", { class: `message ${kind}` }, text);
}

export const TERMINAL = ["succeeded", "failed", "cancelled"];

export function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-testid": "status" }, status);
}

export function accuracy(value) {
  return value === null || value === undefined ? "—" : value.toFixed(3);
}

export function count(value) {
  return value === null || value === undefined ? "—" : value.toLocaleString("en");
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// "relu · lr 0.01 · good weights · 50,000 batches": an experiment in the study's words.
export function describeSpec(spec) {
  const weights =
    spec.weight_std != null
      ? `weights std ${spec.weight_std}`
      : spec.use_bad_weights
        ? "bad weights"
        : "good weights";
  const parts = [spec.activation, `lr ${spec.learning_rate}`, weights];
  parts.push(`${count(spec.training_batches)} batches`);
  if (spec.dataset && spec.dataset !== "mnist") parts.unshift(spec.dataset);
  return parts.join(" · ");
}

export function progressBar(progress) {
  const total = progress.total || 0;
  const bar = h("progress", { max: total || 1, value: progress.step || 0 });
  const rate = progress.steps_per_second;
  const text = [`step ${count(progress.step)} / ${count(total)}`];
  if (rate) text.push(`${rate.toFixed(rate < 10 ? 1 : 0)} steps/s`);
  if (progress.eta_seconds) text.push(`ETA ${duration(progress.eta_seconds)}`);
  return h("div", { class: "progress", "data-testid": "progress" }, bar, h("span", {}, text.join(" · ")));
}
