// Models: what the key may use (GET /v1/models lists only those), with sizes, limits, prices when the server sets
// them, and where the weights came from.

import { api } from "../api.js";
import { formatDay, h, table } from "../ui.js";

/** Fields of a model that carry a price (none today; shown when the server adds them). */
function priceEntries(model) {
  return Object.entries(model).filter(([name]) => /price|pricing|cost/i.test(name));
}

function priceText(value) {
  if (value && typeof value === "object") {
    return Object.entries(value)
      .map(([name, v]) => `${name.replaceAll("_", " ")}: ${v}`)
      .join(", ");
  }
  return String(value);
}

function sizes(model) {
  const shortened = (model.shortened_dimensions || []).filter((d) => d !== model.dimensions);
  return shortened.length ? `${model.dimensions} (also ${shortened.join(", ")})` : String(model.dimensions);
}

function provenance(model) {
  const entries = Object.entries(model.provenance || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (!entries.length) {
    return "—";
  }
  return h(
    "details",
    {},
    h("summary", {}, `${entries.length} fields`),
    h("dl", { class: "pairs" }, entries.map(([name, value]) => [
      h("dt", {}, name),
      h("dd", {}, typeof value === "string" ? value : JSON.stringify(value)),
    ])),
  );
}

function prefixes(model) {
  const parts = [];
  if (model.query_prefix) {
    parts.push(h("div", {}, "query: ", h("code", {}, JSON.stringify(model.query_prefix))));
  }
  if (model.document_prefix) {
    parts.push(h("div", {}, "document: ", h("code", {}, JSON.stringify(model.document_prefix))));
  }
  return parts.length ? parts : "—";
}

export async function render(body, { signal }) {
  const { data } = await api("GET", "/v1/models", { signal });
  if (!data.length) {
    body.append(h("p", {}, "This key may use no model."));
    return;
  }
  const priced = data.some((m) => priceEntries(m).length);
  const columns = [
    {
      label: "Model",
      cell: (m) => [
        h("code", { class: "model-id" }, m.id),
        (m.aliases || []).length ? h("div", { class: "aliases" }, "aliases: ", m.aliases.join(", ")) : null,
      ],
    },
    { label: "Dimensions", cell: sizes, numeric: true },
    { label: "Max input tokens", cell: (m) => String(m.max_input_tokens), numeric: true },
    { label: "Pooling", cell: (m) => `${m.pooling}${m.normalize ? ", normalized" : ""}` },
    { label: "Prefixes", cell: prefixes },
    ...(priced ? [{ label: "Price", cell: (m) => priceEntries(m).map(([, v]) => priceText(v)).join("; ") || "—" }] : []),
    { label: "Owned by", cell: (m) => m.owned_by || "—" },
    { label: "Created", cell: (m) => h("span", { class: "nowrap" }, formatDay(m.created)) },
    { label: "Provenance", cell: provenance },
    {
      label: "Try",
      cell: (m) => h("a", { href: `#/playground?model=${encodeURIComponent(m.id)}`, "aria-label": `Try ${m.id} in the playground` }, "Playground"),
    },
  ];
  body.append(
    h("p", {}, `${data.length} model${data.length === 1 ? "" : "s"} this key may use.`),
    table("Models", columns, data, (m) => ({ "data-model": m.id })),
  );
}
