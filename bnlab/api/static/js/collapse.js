// The collapse demo: draw a digit (or load a picture of one) and ask every net the experiment
// trained, side by side; a net whose output depends on the batch (BN's) answers twice, with its
// population statistics and with the statistics of this one image.

import { ApiError, post } from "./api.js";
import { h, message } from "./dom.js";
import { paintDigit, toDigit } from "./digit.js";

// What each net is asked: a panel per answer, named `bn-population`, `bn-batch`, `plain`.
function asksOf(variants, batchDependent) {
  return variants.flatMap((variant) =>
    batchDependent.has(variant)
      ? [
          { key: `${variant}-population`, variant, mode: "population", title: `${variant} net · population statistics` },
          { key: `${variant}-batch`, variant, mode: "batch", title: `${variant} net · batch statistics (this one image)` },
        ]
      : [{ key: variant, variant, mode: "population", title: `${variant} net (nothing from the batch)` }],
  );
}

// Which of the nets depend on the batch, as the service says (mode_applies), asked once with a
// blank image; a net that cannot answer says why in its panel later.
async function batchDependentOf(experimentId, variants) {
  const blank = new Array(784).fill(0);
  const answers = await Promise.allSettled(
    variants.map((variant) => post(predictPath(experimentId, { variant, mode: "population" }), { pixels: blank })),
  );
  return new Set(variants.filter((_, i) => answers[i].value?.mode_applies));
}

const STROKE = 22; // px on the 280 px pad: about MNIST's stroke once shrunk to 20x20

// variants: the nets the experiment trained.
export function collapseDemo(experimentId, variants) {
  const pad = h("canvas", { width: 280, height: 280, class: "pad", "data-testid": "pad" });
  const seen = h("canvas", { width: 112, height: 112, class: "seen", title: "what the nets see: 28x28" });
  const answersBox = h("div", { class: "answers" });
  const note = h("p", { class: "muted" });
  let asks = [];
  let panels = new Map();
  let asked = 0;
  const ready = batchDependentOf(experimentId, variants).then((dependent) => {
    asks = asksOf(variants, dependent);
    panels = new Map(asks.map((ask) => [ask.key, h("div", { class: "panel", "data-testid": ask.key })]));
    answersBox.replaceChildren(...panels.values());
    reset();
  });

  function reset() {
    clear(pad);
    clear(seen);
    for (const ask of asks) {
      panels.get(ask.key).replaceChildren(h("h3", {}, ask.title), h("p", { class: "muted" }, "—"));
    }
    note.textContent = "Draw a digit with the mouse, white on black; the nets answer when you let go.";
  }

  async function predict() {
    await ready;
    const pixels = toDigit(pad);
    if (!pixels) {
      note.textContent = "Draw a digit first.";
      return;
    }
    paintDigit(seen, pixels);
    const ticket = ++asked; // answers to an older drawing must not overwrite newer ones
    note.textContent = "Asking the nets…";
    // Each net answers for itself: one that cannot (a diverged one, say) says why in its panel.
    const answers = await Promise.allSettled(asks.map((ask) => post(predictPath(experimentId, ask), { pixels })));
    if (ticket !== asked) return;
    asks.forEach((ask, i) => {
      const { value, reason } = answers[i];
      const shown = value ? answerView(value) : message("error", reason.message);
      panels.get(ask.key).replaceChildren(h("h3", {}, ask.title), shown);
    });
    note.textContent = "";
  }

  async function load(file) {
    if (!file) return;
    try {
      drawPicture(pad, await createImageBitmap(file));
    } catch {
      note.replaceChildren(message("error", `${file.name} is not an image the browser can read`));
      return;
    }
    predict();
  }

  makeDrawable(pad, predict);
  reset();
  const picker = h("input", {
    type: "file",
    accept: "image/png,image/jpeg",
    onchange: (e) => load(e.target.files[0]),
  });
  return h(
    "section",
    { class: "collapse" },
    h("h2", {}, "Ask the nets: the collapse"),
    h(
      "p",
      {},
      "With the statistics of a batch of one image, every BN output equals beta, so a BN net gives ",
      "the same answer whatever you draw. With its population statistics it answers as a served ",
      "model should. A net without BN (plain, LayerNorm, GroupNorm) takes nothing from the batch: ",
      "it has nothing to get wrong.",
    ),
    h(
      "div",
      { class: "demo" },
      h(
        "div",
        { class: "drawing" },
        pad,
        h(
          "div",
          { class: "tools" },
          h("button", { type: "button", onclick: predict }, "Predict"),
          h("button", { type: "button", class: "secondary", onclick: reset }, "Clear"),
          h("label", { class: "file" }, "or load a picture: ", picker),
        ),
        h("div", { class: "seen-box" }, seen, h("span", { class: "muted" }, "what the nets see (28x28)")),
        note,
      ),
      answersBox,
    ),
    testImages(experimentId),
  );
}

const TEST_IMAGES = 200;

// The study's own check (POST /experiments/{id}/collapse): the first test images one at a time in
// each mode, and the whole test set in large batches, where batch statistics do fine.
function testImages(experimentId) {
  const outcome = h("div", { "data-testid": "test-collapse" });
  const run = async (event) => {
    event.target.disabled = true;
    outcome.replaceChildren(h("p", { class: "muted" }, "Asking…"));
    try {
      const answer = await post(`/experiments/${experimentId}/collapse?n=${TEST_IMAGES}`);
      outcome.replaceChildren(collapseTable(answer));
    } catch (error) {
      const missing = error instanceof ApiError && error.missingRoute;
      outcome.replaceChildren(
        message("info", missing ? "This service has no collapse check." : error.message),
      );
    } finally {
      event.target.disabled = false;
    }
  };
  return h(
    "div",
    { class: "test-images" },
    h("h3", {}, "The test images"),
    h(
      "button",
      { type: "button", class: "secondary", onclick: run },
      `First ${TEST_IMAGES} test images, one at a time`,
    ),
    outcome,
  );
}

// A net per block: population statistics, and batch statistics where they apply to it.
function collapseTable(answer) {
  const percent = (value) => `${(value * 100).toFixed(1)}%`;
  const classes = (predictions) => {
    const distinct = new Set(predictions);
    return distinct.size === 1 ? `every image: ${predictions[0]}` : `${distinct.size} classes given`;
  };
  const row = (title, single, wholeAccuracy) =>
    h(
      "tr",
      {},
      h("th", {}, title),
      h("td", {}, `${percent(single.accuracy)} (${classes(single.predictions)})`),
      h("td", {}, percent(wholeAccuracy)),
    );
  const nets = Object.entries(answer.variants ?? { [answer.variant]: answer });
  const [, first] = nets[0];
  const whole = first.whole_test_set;
  return h(
    "table",
    { class: "results" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, `${answer.n} test images`),
        h("th", {}, "one image at a time"),
        h("th", {}, `all ${whole.images.toLocaleString("en")} in batches of ${whole.batch_size}`),
      ),
    ),
    nets.map(([variant, net]) =>
      h(
        "tbody",
        { "data-variant": variant },
        row(`${variant} · population statistics`, net.one_at_a_time.population, net.whole_test_set.population_accuracy),
        net.mode_applies
          ? row(`${variant} · batch statistics`, net.one_at_a_time.batch, net.whole_test_set.batch_accuracy)
          : null,
      ),
    ),
  );
}

function predictPath(experimentId, ask) {
  const query = new URLSearchParams({ experiment_id: experimentId, variant: ask.variant, mode: ask.mode });
  return `/predict?${query}`;
}

function answerView(answer) {
  const best = answer.prediction;
  const bars = answer.probabilities.map((p, digit) =>
    h(
      "li",
      { class: digit === best ? "best" : null },
      h("span", { class: "label" }, digit),
      h("span", { class: "bar" }, h("span", { style: `width: ${(p * 100).toFixed(1)}%` })),
      h("span", { class: "value" }, p.toFixed(3)),
    ),
  );
  return h(
    "div",
    {},
    h("div", { class: "digit", "data-testid": "prediction" }, String(best)),
    h("ol", { class: "bars", "data-testid": "probabilities" }, bars),
  );
}

function clear(canvas) {
  const context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
}

// Strokes with the mouse, a pen or a finger; `done` runs when one ends.
function makeDrawable(canvas, done) {
  const context = canvas.getContext("2d");
  let last = null;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * canvas.width) / box.width,
      ((event.clientY - box.top) * canvas.height) / box.height,
    ];
  };
  const line = (to) => {
    context.strokeStyle = "#fff";
    context.lineWidth = STROKE;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...last);
    context.lineTo(...to);
    context.stroke();
    last = to;
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = at(event);
    line(last);
  });
  canvas.addEventListener("pointermove", (event) => last && line(at(event)));
  const end = () => {
    if (!last) return;
    last = null;
    done();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

// A picture fitted onto the pad; dark-on-light pictures (ink on paper) are inverted.
function drawPicture(canvas, picture) {
  clear(canvas);
  const context = canvas.getContext("2d");
  const scale = Math.min(canvas.width / picture.width, canvas.height / picture.height);
  const width = Math.max(1, Math.round(picture.width * scale));
  const height = Math.max(1, Math.round(picture.height * scale));
  const left = Math.floor((canvas.width - width) / 2);
  const top = Math.floor((canvas.height - height) / 2);
  context.fillStyle = "#fff"; // transparent parts are paper
  context.fillRect(left, top, width, height);
  context.drawImage(picture, left, top, width, height);
  const image = context.getImageData(left, top, width, height);
  const pixels = image.data;
  const grey = (i) => (pixels[i] + pixels[i + 1] + pixels[i + 2]) / 3;
  let light = 0;
  for (let i = 0; i < pixels.length; i += 4) light += grey(i) / 255;
  const invert = light / (pixels.length / 4) > 0.5;
  for (let i = 0; i < pixels.length; i += 4) {
    const value = invert ? 255 - grey(i) : grey(i);
    pixels[i] = pixels[i + 1] = pixels[i + 2] = value;
  }
  context.putImageData(image, left, top);
}
