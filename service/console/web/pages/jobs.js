// Jobs and webhooks: async embedding jobs with live progress (cancel, download results), and webhook endpoints with
// their delivery attempts. Every kind of long-running work is one entry of KINDS, listed by worklist.js.

import { api } from "../api.js";
import { announce, confirmDialog, errorBox, field, formatNumber, formatTime, h, progressBar, secretPanel, section, table } from "../ui.js";
import { workList } from "../worklist.js";

const RUNNING = new Set(["queued", "in_progress"]);
// Larger jobs are better read with the CLI (`embeddings jobs results ID --output FILE`) than held in a browser tab.
const MAX_DOWNLOAD_INPUTS = 100000;
const RESULTS_PAGE = 1000;

async function downloadResults(job, status, signal) {
  const total = job.progress?.total ?? job.input_count ?? 0;
  if (total > MAX_DOWNLOAD_INPUTS) {
    status.textContent = `${formatNumber(total)} vectors: use the CLI, embeddings jobs results ${job.id} --output FILE.`;
    return;
  }
  const lines = [];
  let offset = 0;
  for (;;) {
    const page = await api("GET", `/v1/async/jobs/${encodeURIComponent(job.id)}/results`, {
      query: { offset, limit: RESULTS_PAGE },
      signal,
    });
    for (const item of page.data) {
      lines.push(`${JSON.stringify({ index: item.index, embedding: item.embedding })}\n`);
    }
    status.textContent = `Downloading… ${formatNumber(lines.length)} / ${formatNumber(total)}`;
    if (!page.has_more || !page.data.length) {
      break;
    }
    offset = page.next_offset ?? offset + page.data.length;
  }
  const url = URL.createObjectURL(new Blob(lines, { type: "application/x-ndjson" }));
  const link = h("a", { href: url, download: `${job.id}.jsonl`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  status.textContent = `Downloaded ${formatNumber(lines.length)} vectors as ${job.id}.jsonl.`;
}

function jobActions(job, controls) {
  const status = h("span", { class: "hint", role: "status" });
  const buttons = [];
  if (RUNNING.has(job.status)) {
    buttons.push(
      h(
        "button",
        {
          type: "button",
          class: "danger small",
          "aria-label": `Cancel job ${job.id}`,
          onclick: async () => {
            if (!(await confirmDialog(`Cancel job ${job.id}? Inputs not embedded yet are dropped.`, "Cancel job"))) {
              return;
            }
            try {
              controls.replace(await api("POST", `/v1/async/jobs/${encodeURIComponent(job.id)}/cancel`, { signal: controls.signal }));
              announce(`Job ${job.id} cancelled.`);
            } catch (err) {
              if (err.name !== "AbortError") {
                controls.report(err);
              }
            }
          },
        },
        "Cancel",
      ),
    );
  }
  if (job.status === "completed") {
    buttons.push(
      h(
        "button",
        {
          type: "button",
          class: "secondary small",
          "aria-label": `Download the results of job ${job.id}`,
          onclick: async (event) => {
            event.currentTarget.disabled = true;
            const button = event.currentTarget;
            try {
              await downloadResults(job, status, controls.signal);
            } catch (err) {
              if (err.name !== "AbortError") {
                status.textContent = "";
                controls.report(err);
              }
            } finally {
              button.disabled = false;
            }
          },
        },
        "Download",
      ),
    );
  }
  return buttons.length ? [h("div", { class: "actions" }, buttons), status] : "—";
}

function jobStatus(job) {
  return [
    h("span", { class: `badge ${job.status}` }, job.status.replace("_", " ")),
    job.error?.message ? h("div", { class: "error-text" }, `${job.error.code}: ${job.error.message}`) : null,
  ];
}

function jobProgress(job) {
  const bar = progressBar(`Progress of job ${job.id}`);
  bar.update(job.progress?.completed ?? 0, job.progress?.total ?? job.input_count ?? 0);
  return bar.element;
}

function metadataText(job) {
  const entries = Object.entries(job.metadata || {});
  return entries.length ? h("div", { class: "hint" }, entries.map(([k, v]) => `${k}=${v}`).join(", ")) : null;
}

const asyncJobs = {
  title: "Async embedding jobs",
  caption: "Async embedding jobs, newest first",
  async load({ after, signal }) {
    const page = await api("GET", "/v1/async/jobs", { query: { limit: 20, after }, signal });
    return { items: page.data, hasMore: Boolean(page.has_more), lastId: page.last_id };
  },
  get: (id, signal) => api("GET", `/v1/async/jobs/${encodeURIComponent(id)}`, { signal }),
  id: (job) => job.id,
  active: (job) => RUNNING.has(job.status),
  columns: [
    { label: "Job", key: (j) => j.id, cell: (j) => [h("code", {}, j.id), h("div", { class: "hint" }, j.model), metadataText(j)] },
    { label: "Status", key: (j) => `${j.status}${j.error?.message || ""}`, cell: jobStatus },
    { label: "Progress", key: (j) => `${j.progress?.completed}/${j.progress?.total}`, cell: jobProgress },
    { label: "Tokens", key: (j) => String(j.usage?.total_tokens), cell: (j) => formatNumber(j.usage?.total_tokens ?? 0), numeric: true },
    {
      label: "Created",
      key: (j) => `${j.created_at}/${j.expires_at}`,
      cell: (j) => [
        h("span", { class: "nowrap" }, formatTime(j.created_at)),
        j.expires_at ? h("div", { class: "hint" }, `results until ${formatTime(j.expires_at)}`) : null,
      ],
    },
    { label: "Actions", key: (j) => j.status, cell: jobActions },
  ],
};

// OpenAI Batch API batches (/v1/batches) join here as another kind with the same shape as asyncJobs.
const KINDS = [asyncJobs];

function deliveriesTable(deliveries) {
  if (!deliveries.length) {
    return h("p", {}, "No delivery attempts yet.");
  }
  const numbered = deliveries.some((d) => d.attempt !== undefined);
  return table(
    "Delivery attempts, newest first",
    [
      { label: "Attempted", cell: (d) => formatTime(d.attempted_at) },
      { label: "Event", cell: (d) => [h("code", {}, d.event_id), h("div", { class: "hint" }, d.event_type)] },
      ...(numbered ? [{ label: "Attempt", cell: (d) => String(d.attempt ?? "—"), numeric: true }] : []),
      { label: "Outcome", cell: (d) => h("span", { class: `badge ${d.outcome}` }, d.outcome) },
      { label: "HTTP status", cell: (d) => String(d.status_code ?? "—"), numeric: true },
      { label: "Duration", cell: (d) => (d.duration_ms === undefined ? "—" : `${d.duration_ms} ms`), numeric: true },
      { label: "Error", cell: (d) => d.error || "—" },
    ],
    deliveries,
  );
}

async function webhookSection(signal) {
  const listRegion = h("div", {});
  const message = h("div", {});
  const deliveries = h("div", { class: "deliveries" });
  const secrets = h("div", {});

  async function showDeliveries(webhook, button) {
    const expanded = button.getAttribute("aria-expanded") === "true";
    listRegion.querySelectorAll("button[aria-expanded]").forEach((b) => b.setAttribute("aria-expanded", "false"));
    if (expanded) {
      deliveries.replaceChildren();
      return;
    }
    button.setAttribute("aria-expanded", "true");
    const refresh = async () => {
      try {
        const page = await api("GET", `/v1/webhooks/${encodeURIComponent(webhook.id)}/deliveries`, { query: { limit: 100 }, signal });
        deliveries.replaceChildren(
          h("h3", { id: "deliveries-title" }, `Deliveries to ${webhook.url}`),
          h("button", { type: "button", class: "secondary small", onclick: refresh }, "Refresh"),
          deliveriesTable(page.data),
        );
      } catch (err) {
        if (err.name !== "AbortError") {
          deliveries.replaceChildren(errorBox(err));
        }
      }
    };
    await refresh();
  }

  async function remove(webhook) {
    if (!(await confirmDialog(`Delete the endpoint ${webhook.url}? Its pending deliveries are dropped.`, "Delete"))) {
      return;
    }
    try {
      await api("DELETE", `/v1/webhooks/${encodeURIComponent(webhook.id)}`, { signal });
      announce("Endpoint deleted.");
      deliveries.replaceChildren();
      await reload();
    } catch (err) {
      if (err.name !== "AbortError") {
        message.replaceChildren(errorBox(err));
      }
    }
  }

  async function reload() {
    const { data } = await api("GET", "/v1/webhooks", { signal });
    message.replaceChildren();
    listRegion.replaceChildren(
      data.length
        ? table(
            "Webhook endpoints",
            [
              { label: "Endpoint", cell: (w) => [h("code", {}, w.id), h("div", {}, w.url)] },
              { label: "Description", cell: (w) => w.description || "—" },
              { label: "Created", cell: (w) => formatTime(w.created_at) },
              {
                label: "State",
                cell: (w) =>
                  w.disabled_at
                    ? [h("span", { class: "badge failed" }, "disabled"), h("div", { class: "hint" }, `${formatTime(w.disabled_at)}: ${w.disabled_reason || ""}`)]
                    : h("span", { class: "badge active" }, "active"),
              },
              {
                label: "Actions",
                cell: (w) =>
                  h(
                    "div",
                    { class: "actions" },
                    h(
                      "button",
                      {
                        type: "button",
                        class: "secondary small",
                        "aria-expanded": "false",
                        "aria-label": `Deliveries to ${w.url}`,
                        onclick: (event) => showDeliveries(w, event.currentTarget),
                      },
                      "Deliveries",
                    ),
                    h("button", { type: "button", class: "danger small", "aria-label": `Delete endpoint ${w.url}`, onclick: () => remove(w) }, "Delete"),
                  ),
              },
            ],
            data,
            (w) => ({ "data-id": w.id }),
          )
        : h("p", {}, "No endpoints registered."),
    );
  }

  const url = h("input", { type: "url", name: "url", required: true, autocomplete: "off", placeholder: "https://example.com/hooks/embeddings" });
  const description = h("input", { type: "text", name: "description", autocomplete: "off" });
  const createResult = h("div", {});
  const form = h(
    "form",
    { class: "grid-form", "aria-label": "Register a webhook endpoint" },
    field("Endpoint URL", url, "Receives a signed POST when a job completes, fails or is cancelled."),
    field("Description", description),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Register endpoint")),
    createResult,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const webhook = await api("POST", "/v1/webhooks", { body: { url: url.value.trim(), description: description.value.trim() }, signal });
      form.reset();
      createResult.replaceChildren();
      secrets.replaceChildren(secretPanel(`Signing secret of ${webhook.url}`, webhook.secret, () => url.focus()));
      await reload();
    } catch (err) {
      if (err.name !== "AbortError") {
        createResult.replaceChildren(errorBox(err));
      }
    }
  });

  await reload();
  return section("Webhook endpoints", secrets, message, listRegion, deliveries, h("h3", {}, "Register an endpoint"), form);
}

export async function render(body, { signal }) {
  for (const kind of KINDS) {
    body.append(section(kind.title, await workList(kind, signal)));
  }
  body.append(await webhookSection(signal));
}
