// Usage (admin keys): tokens and requests per UTC day, grouped by model, key, tenant or end user, over a date range,
// and what they cost (GET /v1/admin/usage?since=&until=&group_by_user=true: rows per end user, costed at the prices
// their tokens were used at).

import { api } from "../api.js";
import { PALETTE, stackedBars } from "../charts.js";
import { errorBox, field, formatNumber, h, select, table } from "../ui.js";

const GROUPS = [
  ["model", "model"],
  ["key_id", "key"],
  ["tenant", "tenant"],
  ["user", "end user"],
];
const COUNTS = ["requests", "tokens", "job_requests", "job_tokens", "cost"];

/** The group a row belongs to: usage without an end user (or recorded without one) is "(no user)". */
function groupOf(row, group) {
  return row[group] || (group === "user" ? "(no user)" : "—");
}

/** A cost as the API gives it (a double): up to 6 significant digits, so float sums show no noise. */
function formatCost(value) {
  return Number(value || 0).toLocaleString("en-US", { maximumSignificantDigits: 6 });
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function daysBetween(since, until) {
  const days = [];
  for (let d = new Date(`${since}T00:00:00Z`); isoDay(d) <= until; d.setUTCDate(d.getUTCDate() + 1)) {
    days.push(isoDay(d));
    if (days.length > 3660) {
      break; // ten years: enough for any chart
    }
  }
  return days;
}

/** Per group: daily values of `measure(row)`, biggest groups first, the rest folded into "other". */
function seriesOf(rows, days, group, measure) {
  const byGroup = new Map();
  for (const row of rows) {
    const name = groupOf(row, group);
    if (!byGroup.has(name)) {
      byGroup.set(name, new Array(days.length).fill(0));
    }
    const index = days.indexOf(row.day);
    if (index >= 0) {
      byGroup.get(name)[index] += measure(row);
    }
  }
  const series = [...byGroup.entries()]
    .map(([name, values]) => ({ name, values, total: values.reduce((a, b) => a + b, 0) }))
    .sort((a, b) => b.total - a.total || a.name.localeCompare(b.name));
  if (series.length <= PALETTE.length) {
    return series;
  }
  const kept = series.slice(0, PALETTE.length - 1);
  const rest = series.slice(PALETTE.length - 1);
  const other = days.map((_, d) => rest.reduce((sum, s) => sum + s.values[d], 0));
  return [...kept, { name: `${rest.length} others`, values: other }];
}

function totalsTable(rows, group, label, currency) {
  const totals = new Map();
  for (const row of rows) {
    const name = groupOf(row, group);
    const t = totals.get(name) || { name, requests: 0, tokens: 0, job_requests: 0, job_tokens: 0, cost: 0 };
    for (const k of COUNTS) {
      t[k] += row[k] || 0;
    }
    totals.set(name, t);
  }
  const data = [...totals.values()].sort((a, b) => b.tokens + b.job_tokens - (a.tokens + a.job_tokens));
  return table(`Usage per ${label}`, [
    { label: label[0].toUpperCase() + label.slice(1), cell: (t) => t.name },
    { label: "Requests", cell: (t) => formatNumber(t.requests), numeric: true },
    { label: "Tokens", cell: (t) => formatNumber(t.tokens), numeric: true },
    { label: "Job requests", cell: (t) => formatNumber(t.job_requests), numeric: true },
    { label: "Job tokens", cell: (t) => formatNumber(t.job_tokens), numeric: true },
    { label: `Cost (${currency})`, cell: (t) => formatCost(t.cost), numeric: true },
  ], data);
}

function report(usage, since, until, group) {
  const label = GROUPS.find(([g]) => g === group)[1];
  const days = daysBetween(since, until);
  const rows = usage.data;
  const currency = usage.currency || "USD";
  const totals = [
    ["Requests", formatNumber(usage.total_requests)],
    ["Tokens", formatNumber(usage.total_tokens)],
    ["Job requests", formatNumber(usage.total_job_requests)],
    ["Job tokens", formatNumber(usage.total_job_tokens)],
    [`Cost (${currency})`, formatCost(usage.total_cost)],
  ];
  const summary = h(
    "dl",
    { class: "totals" },
    totals.map(([label, value]) => h("div", {}, h("dt", {}, label), h("dd", {}, value))),
  );
  if (!rows.length) {
    return [summary, h("p", {}, `No usage from ${since} to ${until}.`)];
  }
  return [
    summary,
    stackedBars(`Tokens per day by ${label} (calls and jobs)`, "tokens", days, seriesOf(rows, days, group, (r) => r.tokens + r.job_tokens)),
    stackedBars(`Requests per day by ${label} (calls and jobs)`, "requests", days, seriesOf(rows, days, group, (r) => r.requests + r.job_requests)),
    h("h3", {}, `Totals per ${label}`),
    totalsTable(rows, group, label, currency),
  ];
}

export async function render(body, { signal }) {
  const today = new Date();
  const monthAgo = new Date(today.getTime() - 29 * 86400000);
  let since = isoDay(monthAgo);
  let until = isoDay(today);
  // The first read comes before the form: a key that may not read usage sees the API's refusal and nothing else.
  const first = await api("GET", "/v1/admin/usage", { query: { since, until, group_by_user: true }, signal });

  const sinceInput = h("input", { type: "date", name: "since", value: since, required: true });
  const untilInput = h("input", { type: "date", name: "until", value: until, required: true });
  const tenantInput = h("input", { type: "text", name: "tenant", autocomplete: "off" });
  const groupSelect = select("group", GROUPS, "model");
  const output = h("div", { class: "usage-report", "aria-live": "polite" });
  let latest = first;
  const form = h(
    "form",
    { class: "panel filters", "aria-label": "Usage range" },
    field("Since (UTC day)", sinceInput),
    field("Until (UTC day)", untilInput),
    field("Tenant", tenantInput, "Empty: every tenant."),
    field("Group by", groupSelect, "End user: the calls' user parameter, recorded for keys with per-user limits."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Show")),
  );
  groupSelect.addEventListener("change", () => output.replaceChildren(...report(latest, since, until, groupSelect.value)));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (sinceInput.value > untilInput.value) {
      output.replaceChildren(h("p", { class: "error", role: "alert" }, "'Since' must not be after 'Until'."));
      return;
    }
    try {
      latest = await api("GET", "/v1/admin/usage", {
        query: { since: sinceInput.value, until: untilInput.value, tenant: tenantInput.value.trim(), group_by_user: true },
        signal,
      });
      since = sinceInput.value;
      until = untilInput.value;
      output.replaceChildren(...report(latest, since, until, groupSelect.value));
    } catch (err) {
      if (err.name !== "AbortError") {
        output.replaceChildren(errorBox(err));
      }
    }
  });
  output.replaceChildren(...report(first, since, until, "model"));
  body.append(form, output);
}
