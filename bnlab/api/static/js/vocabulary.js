// The study's words as the service defines them (bnlab/vocabulary.py), read from its OpenAPI
// document rather than copied here: a variant the service adds shows up in the form, the charts
// and the tables by itself.

import { get } from "./api.js";

// Line colours by the variant's place in the service's list: the same net, the same colour on
// every page. plain and bn keep the colours the dashboard always gave them.
const PALETTE = ["#d1495b", "#00798c", "#edae49", "#66a182", "#7b2cbf", "#2e4057", "#e07a5f", "#8d96a3"];

let loaded = null;

// {fields: {name: {choices, default}}, variants: [...], defaultVariants: [...]} of ExperimentSpec.
export function vocabulary() {
  loaded ??= get("/openapi.json").then(readSpec, (error) => {
    loaded = null; // not cached: the next page asks again
    throw error;
  });
  return loaded;
}

function readSpec(openapi) {
  const schemas = openapi.components.schemas;
  const resolve = (schema) => (schema?.$ref ? schemas[schema.$ref.split("/").pop()] : schema);
  const fields = {};
  for (const [name, property] of Object.entries(schemas.ExperimentSpec.properties)) {
    const schema = resolve(property);
    const choices = resolve(schema.items)?.enum ?? schema.enum;
    if (choices) fields[name] = { choices, default: property.default };
  }
  return { fields, variants: fields.variants.choices, defaultVariants: fields.variants.default };
}

export function variantColor(variant, variants) {
  const index = variants.indexOf(variant);
  return PALETTE[(index < 0 ? variants.length : index) % PALETTE.length];
}

// The variants of `names` in the service's order (the order of its results and series).
export function inOrder(names, variants) {
  const known = variants.filter((variant) => names.includes(variant));
  return [...known, ...names.filter((name) => !variants.includes(name))];
}
