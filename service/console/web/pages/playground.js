// Playground: embed 2 to 10 texts with any model and options, see their cosine similarities as a heat map, and the
// same request as curl, Python and Node.

import { api, request } from "../api.js";
import { curlSnippet, nodeSnippet, pythonSnippet } from "../snippets.js";
import { announce, copy, errorBox, field, formatNumber, h, select, tabs } from "../ui.js";
import { cosineMatrix, decodeEmbedding } from "../vectors.js";

const MIN_TEXTS = 2;
const MAX_TEXTS = 10;
const EXAMPLES = [
  "The quick brown fox jumps over the lazy dog.",
  "A fast auburn fox leaps over a sleepy hound.",
  "Quarterly revenue grew by eight percent.",
];

/** The request body the form describes (only options the operator set). */
function requestBody(form, texts) {
  const body = { model: form.model.value, input: texts.map((t) => t.value) };
  if (form.dimensions.value) {
    body.dimensions = Number(form.dimensions.value);
  }
  if (form.normalize.value) {
    body.normalize = form.normalize.value === "true";
  }
  if (form.input_type.value) {
    body.input_type = form.input_type.value;
  }
  body.encoding_format = form.encoding_format.value;
  return body;
}

function luminance(channels) {
  const [r, g, b] = channels.map((c) => {
    const v = c / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

/** Colors for a similarity in [-1, 1]: white at 0, deepening blue towards 1, orange towards -1; the text is black or
 * white, whichever contrasts more with the cell. */
function cellColors(value) {
  if (Number.isNaN(value)) {
    return { background: "transparent", text: "inherit" };
  }
  const t = Math.min(1, Math.abs(value));
  const end = value >= 0 ? [31, 78, 121] : [179, 88, 6];
  const channels = end.map((c) => Math.round(255 + (c - 255) * t));
  const light = luminance(channels);
  const text = 1.05 / (light + 0.05) > (light + 0.05) / 0.05 ? "#fff" : "#000";
  return { background: `rgb(${channels.join(", ")})`, text };
}

function shortText(text, length = 40) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

function heatMap(texts, matrix) {
  const n = texts.length;
  const header = h("tr", {}, h("td", {}), texts.map((t, j) => h("th", { scope: "col", title: t }, `#${j + 1}`)));
  const rows = matrix.map((row, i) =>
    h(
      "tr",
      {},
      h("th", { scope: "row", title: texts[i] }, `#${i + 1} `, h("span", { class: "row-text" }, shortText(texts[i]))),
      row.map((value, j) => {
        const colors = cellColors(value);
        const cell = h(
          "td",
          {
            class: "sim",
            "data-row": i,
            "data-col": j,
            "data-value": String(value),
            title: `#${i + 1} vs #${j + 1}: ${value}`,
          },
          Number.isNaN(value) ? "—" : value.toFixed(4),
        );
        cell.style.backgroundColor = colors.background; // CSSOM, allowed by the style-src policy
        cell.style.color = colors.text;
        return cell;
      }),
    ),
  );
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "heatmap", "aria-describedby": "heatmap-legend" },
      h("caption", {}, `Cosine similarity of ${n} texts`),
      h("thead", {}, header),
      h("tbody", {}, rows),
    ),
    h(
      "p",
      { id: "heatmap-legend", class: "legend" },
      h("span", { class: "legend-scale", "aria-hidden": "true" }),
      "−1 (orange) … 0 (white) … 1 (blue): cosine of the angle between two vectors, 1 meaning the same direction.",
    ),
  );
}

function codeBlock(code) {
  const status = h("span", { class: "hint", role: "status" });
  const pre = h("pre", {}, h("code", {}, code));
  return h("div", { class: "code" }, pre, h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => copy(pre, status) }, "Copy"), status));
}

function snippets(body) {
  const origin = window.location.origin;
  return tabs("The request as code", [
    { label: "curl", content: codeBlock(curlSnippet(origin, body)) },
    { label: "Python", content: codeBlock(pythonSnippet(origin, body)) },
    { label: "Node", content: codeBlock(nodeSnippet(origin, body)) },
  ]);
}

export async function render(body, { params, signal }) {
  const { data: models } = await api("GET", "/v1/models", { signal });
  if (!models.length) {
    body.append(h("p", {}, "This key may use no model."));
    return;
  }
  const wanted = params.get("model");
  const initial = models.find((m) => m.id === wanted || (m.aliases || []).includes(wanted)) || models[0];

  const modelSelect = select("model", models.map((m) => [m.id, m.id]), initial.id);
  const dimensions = select("dimensions", [], "");
  const normalize = select("normalize", [], "");
  const inputType = select("input_type", [["", "none"], ["query", "query"], ["document", "document"]], "");
  const encoding = select("encoding_format", [["float", "float"], ["base64", "base64"]], "float");
  const textList = h("ol", { class: "texts" });
  const addButton = h("button", { type: "button", class: "secondary" }, "Add a text");
  const result = h("div", { class: "result", "aria-live": "polite" });
  const code = h("div", { class: "snippets" });

  function modelOptions() {
    const model = models.find((m) => m.id === modelSelect.value);
    const shortened = (model.shortened_dimensions || []).filter((d) => d !== model.dimensions);
    dimensions.replaceChildren(
      ...[["", `${model.dimensions} (full)`], ...shortened.map((d) => [String(d), String(d)])].map(([v, l]) => h("option", { value: v }, l)),
    );
    dimensions.disabled = !shortened.length;
    normalize.replaceChildren(
      ...[["", `model default (${model.normalize ? "yes" : "no"})`], ["true", "yes"], ["false", "no"]].map(([v, l]) => h("option", { value: v }, l)),
    );
  }

  function textAreas() {
    return [...textList.querySelectorAll("textarea")];
  }

  function renumber() {
    const items = [...textList.children];
    items.forEach((item, i) => {
      item.querySelector("label").textContent = `Text ${i + 1}`;
      item.querySelector("button").setAttribute("aria-label", `Remove text ${i + 1}`);
      item.querySelector("button").disabled = items.length <= MIN_TEXTS;
    });
    addButton.disabled = items.length >= MAX_TEXTS;
  }

  function addText(value = "") {
    const area = h("textarea", { name: "text", rows: "2", required: true }, value);
    const item = h(
      "li",
      {},
      field("Text", area),
      h(
        "button",
        {
          type: "button",
          class: "secondary small",
          onclick: () => {
            item.remove();
            renumber();
            showCode();
            textAreas()[0]?.focus();
          },
        },
        "Remove",
      ),
    );
    textList.append(item);
    renumber();
    return area;
  }

  function showCode() {
    code.replaceChildren(h("h2", {}, "The request as code"), snippets(requestBody(form, textAreas())));
  }

  const form = h(
    "form",
    { class: "panel playground", "aria-label": "Embedding request" },
    h(
      "div",
      { class: "options" },
      field("Model", modelSelect),
      field("Dimensions", dimensions, "Shortened sizes the model offers."),
      field("Normalize", normalize),
      field("Input type", inputType, "Adds the model's query or document prefix."),
      field("Encoding", encoding),
    ),
    h("fieldset", {}, h("legend", {}, `Texts (${MIN_TEXTS} to ${MAX_TEXTS})`), textList, addButton),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Embed")),
  );
  addButton.addEventListener("click", () => {
    addText().focus();
    showCode();
  });
  modelSelect.addEventListener("change", () => {
    modelOptions();
    showCode();
  });
  form.addEventListener("input", showCode);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const texts = textAreas().map((t) => t.value);
    const payload = requestBody(form, textAreas());
    result.replaceChildren(h("p", {}, "Embedding…"));
    try {
      const { data, headers } = await request("POST", "/v1/embeddings", { body: payload, signal });
      const vectors = data.data.sort((a, b) => a.index - b.index).map((d) => decodeEmbedding(d.embedding));
      const ms = headers.get("openai-processing-ms");
      result.replaceChildren(
        h(
          "p",
          { class: "summary" },
          `${vectors.length} vectors of ${vectors[0].length} dimensions from ${data.model}, `,
          `${formatNumber(data.usage.total_tokens)} tokens`,
          ms ? `, ${ms} ms in the server.` : ".",
        ),
        heatMap(texts, cosineMatrix(vectors)),
      );
      announce("Similarities computed.");
    } catch (err) {
      if (err.name !== "AbortError") {
        result.replaceChildren(errorBox(err));
      }
    }
  });

  modelOptions();
  EXAMPLES.forEach((text) => addText(text));
  body.append(form, result, code);
  showCode();
}
