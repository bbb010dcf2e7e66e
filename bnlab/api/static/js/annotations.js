// A name, markdown notes and tags on an experiment or a sweep (PATCH /experiments/{id},
// PATCH /sweeps/{id}): shown, and edited in place. The same block on both pages.

import { patch } from "./api.js";
import { h, message } from "./dom.js";

// `path`: "/experiments/3" or "/sweeps/1"; `row`: what GET of it returned.
export function annotations(path, row) {
  const box = h("section", { class: "annotations", "data-testid": "annotations" });
  const show = (current) => box.replaceChildren(...shown(current, () => edit(current)).filter(Boolean));
  const edit = (current) => box.replaceChildren(editor(path, current, show));
  show(row);
  return box;
}

export function tagChips(tags, link = true) {
  return h(
    "span",
    { class: "tags", "data-testid": "tags" },
    (tags || []).map((tag) =>
      link
        ? h("a", { class: "tag", href: `#/?${new URLSearchParams({ tag })}` }, tag)
        : h("span", { class: "tag" }, tag),
    ),
  );
}

function shown(row, onEdit) {
  return [
    h(
      "p",
      { class: "toolbar" },
      h("strong", { "data-testid": "name" }, row.name || "unnamed"),
      tagChips(row.tags),
      h("button", { type: "button", class: "secondary", onclick: onEdit }, "Edit name, notes and tags"),
    ),
    row.notes ? h("div", { class: "notes", "data-testid": "notes" }, markdown(row.notes)) : null,
  ];
}

function editor(path, row, done) {
  const name = h("input", { name: "name", value: row.name || "", maxlength: 200, placeholder: "a name" });
  const tags = h("input", { name: "tags", value: (row.tags || []).join(" "), placeholder: "tags, by spaces" });
  const notes = h("textarea", { name: "notes", rows: 8, placeholder: "notes (markdown)" }, row.notes || "");
  const problem = h("div");
  const save = async (event) => {
    event.preventDefault();
    const body = {
      name: name.value.trim() || null,
      notes: notes.value,
      tags: tags.value.split(/[\s,]+/).filter(Boolean),
    };
    try {
      done(await patch(path, body));
    } catch (error) {
      problem.replaceChildren(message("error", error.message));
    }
  };
  return h(
    "form",
    { class: "spec-form", onsubmit: save, "data-testid": "annotations-form" },
    h("label", {}, "Name ", name),
    h("label", {}, "Tags ", tags),
    h("label", {}, "Notes (markdown) ", notes),
    problem,
    h(
      "p",
      { class: "actions" },
      h("button", { type: "submit" }, "Save"),
      h("button", { type: "button", class: "secondary", onclick: () => done(row) }, "Cancel"),
    ),
  );
}

// Enough markdown for lab notes: headings, paragraphs, lists, **bold**, *italic*, `code`.
// Built as nodes from text, never as HTML, so nothing a note says can run in the page.
function markdown(text) {
  const blocks = text.split(/\n{2,}/);
  return blocks.map((block) => {
    const lines = block.split("\n");
    const heading = block.match(/^(#{1,3})\s+(.*)$/s);
    if (heading) return h(`h${heading[1].length + 2}`, {}, inline(heading[2]));
    if (lines.every((line) => /^\s*[-*]\s+/.test(line))) {
      return h("ul", {}, lines.map((line) => h("li", {}, inline(line.replace(/^\s*[-*]\s+/, "")))));
    }
    return h("p", {}, lines.flatMap((line, i) => (i ? [h("br"), ...inline(line)] : inline(line))));
  });
}

function inline(text) {
  const parts = [];
  const pattern = /(\*\*[^*]+\*\*|\*[^*]+\*|`[^`]+`)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parts.push(text.slice(last, match.index));
    const token = match[0];
    if (token.startsWith("**")) parts.push(h("strong", {}, token.slice(2, -2)));
    else if (token.startsWith("`")) parts.push(h("code", {}, token.slice(1, -1)));
    else parts.push(h("em", {}, token.slice(1, -1)));
    last = match.index + token.length;
  }
  parts.push(text.slice(last));
  return parts;
}
