// The new-experiment form, with the study's rows one click away. Submitting queues the
// experiment and opens its page.

import { post } from "../api.js";
import { h, message } from "../dom.js";
import { vocabulary } from "../vocabulary.js";

const LONG = { training_batches: 50000, batches_per_sample: 500 };
const SHORT = { training_batches: 2000, batches_per_sample: 50 };

// The study's rows (design.md): activation, learning rate, initial weights, length.
export const PRESETS = [
  ["relu 0.01 good", { activation: "relu", learning_rate: 0.01, use_bad_weights: false, ...LONG }],
  [
    "relu 0.01 good, 2,000 batches",
    { activation: "relu", learning_rate: 0.01, use_bad_weights: false, ...SHORT },
  ],
  ["sigmoid 0.01 good", { activation: "sigmoid", learning_rate: 0.01, use_bad_weights: false, ...LONG }],
  ["relu 1 good", { activation: "relu", learning_rate: 1, use_bad_weights: false, ...LONG }],
  ["sigmoid 1 good", { activation: "sigmoid", learning_rate: 1, use_bad_weights: false, ...LONG }],
  ["relu 0.01 bad", { activation: "relu", learning_rate: 0.01, use_bad_weights: true, ...LONG }],
  ["sigmoid 0.01 bad", { activation: "sigmoid", learning_rate: 0.01, use_bad_weights: true, ...LONG }],
  ["relu 1 bad", { activation: "relu", learning_rate: 1, use_bad_weights: true, ...LONG }],
  ["sigmoid 1 bad", { activation: "sigmoid", learning_rate: 1, use_bad_weights: true, ...LONG }],
];

// [name, label, input attributes, default]: the study's defaults (bnlab/spec.py).
const FIELDS = [
  ["dataset", "dataset", { options: ["mnist", "fashion-mnist"] }, "mnist"],
  ["activation", "activation", { options: ["relu", "sigmoid", "tanh", "leaky_relu", "elu"] }, "relu"],
  ["learning_rate", "learning rate", { type: "number", step: "any", min: 0 }, 0.01],
  ["use_bad_weights", "bad initial weights (std 5.0, else 0.05)", { type: "checkbox" }, false],
  ["training_batches", "training batches", { type: "number", min: 1 }, 50000],
  ["batches_per_sample", "sample validation accuracy every (batches)", { type: "number", min: 1 }, 500],
  ["validation_size", "validation images", { type: "number", min: 100 }, 5000],
  ["batch_size", "batch size", { type: "number", min: 2 }, 60],
  ["hidden_layers", "hidden layers (widths)", { type: "text" }, "100, 100, 100"],
  ["net", "net (rnn: an LSTM reading the image; variants plain, bn, layer_norm)", { options: ["mlp", "rnn"] }, "mlp"],
  ["rnn_hidden", "rnn: LSTM width", { type: "number", min: 1 }, 100],
  ["sequence", "rnn: reads the image by", { options: ["rows", "pixels"] }, "rows"],
  ["groups", "group_norm's groups (empty: the service's choice)", { type: "number", min: 1 }, ""],
  ["seed", "seed", { type: "number", min: 0 }, 0],
  ["device", "device", { options: ["cpu", "gpu"] }, "cpu"],
];

export async function newView(root) {
  const { variants, defaultVariants } = await vocabulary();
  const form = h("form", { class: "spec-form", "data-testid": "new-experiment" });
  const outcome = h("div");
  form.append(variantsField(variants, defaultVariants));
  for (const [name, label, attributes, initial] of FIELDS)
    form.append(field(name, label, attributes, initial));
  form.append(h("div", { class: "actions" }, h("button", { type: "submit" }, "Start experiment")), outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    outcome.replaceChildren(message("info", "Queueing…"));
    try {
      const experiment = await post("/experiments", readSpec(form));
      location.hash = `#/experiments/${experiment.id}`;
    } catch (error) {
      outcome.replaceChildren(message("error", `Not queued: ${error.message}`));
      button.disabled = false;
    }
  });
  const presets = PRESETS.map(([label, values]) =>
    h("button", { type: "button", class: "preset", onclick: () => fill(form, values) }, label),
  );
  root.replaceChildren(
    h("h1", {}, "New experiment"),
    h("p", {}, "The study's rows, one click away (then change anything, e.g. a shorter run):"),
    h("div", { class: "presets", "data-testid": "presets" }, presets),
    form,
  );
}

function field(name, label, { options, ...attributes }, initial) {
  const input = options
    ? h(
        "select",
        { name },
        options.map((option) => h("option", { value: option, selected: option === initial }, option)),
      )
    : h("input", { name, ...attributes, checked: attributes.type === "checkbox" && initial });
  if (!options && attributes.type !== "checkbox") input.value = initial;
  return h("label", { class: attributes.type === "checkbox" ? "check" : null }, h("span", {}, label), input);
}

// The variants the service knows, as it lists them; the study's pair ticked.
function variantsField(variants, ticked) {
  return h(
    "fieldset",
    { class: "variants", "data-testid": "variants" },
    h("legend", {}, "variants, trained side by side from the same initial weights"),
    variants.map((variant) =>
      h(
        "label",
        { class: "check" },
        h("span", {}, variant),
        h("input", { type: "checkbox", name: "variants", value: variant, checked: ticked.includes(variant) }),
      ),
    ),
  );
}

function fill(form, values) {
  for (const [name, value] of Object.entries(values)) {
    const input = form.elements[name];
    if (input.type === "checkbox") input.checked = value;
    else input.value = value;
  }
}

// The form as an ExperimentSpec; the service checks it and says what is wrong.
function readSpec(form) {
  const ticked = form.querySelectorAll("input[name=variants]:checked");
  const spec = { variants: [...ticked].map((input) => input.value) };
  for (const [name, , attributes] of FIELDS) {
    const input = form.elements[name];
    if (attributes.type === "checkbox") spec[name] = input.checked;
    else if (attributes.type === "number") spec[name] = input.value === "" ? null : Number(input.value);
    else if (name === "hidden_layers")
      spec[name] = input.value
        .split(/[\s,]+/)
        .filter(Boolean)
        .map(Number);
    else spec[name] = input.value;
  }
  return spec;
}
