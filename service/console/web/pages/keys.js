// Keys and tenants (admin keys): create keys (the secret is shown once), revoke, rotate, set tenant limits.

import { api } from "../api.js";
import {
  announce,
  confirmDialog,
  errorBox,
  field,
  formatNumber,
  formatTime,
  h,
  secretPanel,
  section,
  table,
  uid,
} from "../ui.js";

function limit(value) {
  if (value === undefined || value === null) {
    return "server default";
  }
  return value === 0 ? "unlimited" : formatNumber(value);
}

/** A number field's value for the API: absent when empty (the server's default). */
function optionalNumber(input) {
  return input.value.trim() === "" ? undefined : Number(input.value);
}

function limitInput(name) {
  return h("input", { type: "number", name, min: "0", step: "1", inputmode: "numeric" });
}

function status(key) {
  if (key.revoked_at) {
    return h("span", { class: "badge revoked" }, `revoked ${formatTime(key.revoked_at)}`);
  }
  return [h("span", { class: "badge active" }, "active"), key.rotated_at ? h("div", { class: "hint" }, `rotated ${formatTime(key.rotated_at)}`) : null];
}

export async function render(body, { signal }) {
  let keys = (await api("GET", "/v1/admin/keys", { signal })).data;

  const secrets = h("div", { class: "secrets" });
  const listRegion = h("div", {});
  const listMessage = h("div", {});
  const filter = h("input", { type: "search", name: "tenant-filter", autocomplete: "off" });
  const tenantList = h("datalist", { id: "known-tenants" });

  function showSecret(title, token) {
    secrets.replaceChildren(secretPanel(title, token, () => filter.focus()));
  }

  async function reload() {
    keys = (await api("GET", "/v1/admin/keys", { signal })).data;
    showKeys();
  }

  async function act(key, verb) {
    const question =
      verb === "revoke"
        ? `Revoke key ${key.id} (${key.tenant}/${key.name || "unnamed"})? Calls with it fail within a second; this cannot be undone.`
        : `Rotate key ${key.id} (${key.tenant}/${key.name || "unnamed"})? It gets a new secret and the old one stops working.`;
    if (!(await confirmDialog(question, verb === "revoke" ? "Revoke" : "Rotate"))) {
      return;
    }
    try {
      const answer = await api("POST", `/v1/admin/keys/${encodeURIComponent(key.id)}/${verb}`, { signal });
      if (verb === "rotate") {
        showSecret(`New secret of key ${key.id}`, answer.token);
      }
      announce(verb === "revoke" ? `Key ${key.id} revoked.` : `Key ${key.id} rotated.`);
      listMessage.replaceChildren();
      await reload();
    } catch (err) {
      if (err.name !== "AbortError") {
        listMessage.replaceChildren(errorBox(err));
      }
    }
  }

  function showKeys() {
    const wanted = filter.value.trim().toLowerCase();
    const shown = keys.filter((k) => !wanted || k.tenant.toLowerCase().includes(wanted));
    const tenants = [...new Set(keys.map((k) => k.tenant))].sort();
    tenantList.replaceChildren(...tenants.map((t) => h("option", { value: t })));
    const columns = [
      { label: "Key id", cell: (k) => h("code", {}, k.id) },
      { label: "Tenant", cell: (k) => k.tenant },
      { label: "Name", cell: (k) => k.name || "—" },
      { label: "Role", cell: (k) => k.role },
      { label: "Models", cell: (k) => (k.models.length ? k.models.join(", ") : "all") },
      { label: "Requests/min", cell: (k) => limit(k.rpm), numeric: true },
      { label: "Tokens/min", cell: (k) => limit(k.tpm), numeric: true },
      { label: "Created", cell: (k) => h("span", { class: "nowrap" }, formatTime(k.created_at)) },
      { label: "Status", cell: status },
      {
        label: "Actions",
        cell: (k) =>
          k.revoked_at
            ? "—"
            : h(
                "div",
                { class: "actions" },
                h("button", { type: "button", class: "secondary small", "aria-label": `Rotate key ${k.id}`, onclick: () => act(k, "rotate") }, "Rotate"),
                h("button", { type: "button", class: "danger small", "aria-label": `Revoke key ${k.id}`, onclick: () => act(k, "revoke") }, "Revoke"),
              ),
      },
    ];
    listRegion.replaceChildren(
      shown.length ? table("API keys", columns, shown, (k) => ({ "data-key-id": k.id })) : h("p", {}, "No keys match."),
    );
  }

  // Create a key.
  const tenant = h("input", { type: "text", name: "tenant", required: true, autocomplete: "off", list: "known-tenants" });
  const name = h("input", { type: "text", name: "name", autocomplete: "off" });
  const modelsInput = h("input", { type: "text", name: "models", autocomplete: "off" });
  const rpm = limitInput("rpm");
  const tpm = limitInput("tpm");
  const admin = h("input", { type: "checkbox", name: "admin", id: uid("admin") });
  const createResult = h("div", {});
  const createForm = h(
    "form",
    { class: "grid-form", "aria-label": "Create a key" },
    field("Tenant", tenant, "Its jobs, webhooks and usage belong to this tenant."),
    field("Name", name, "A note for humans, e.g. ci."),
    field("Models", modelsInput, "Comma-separated ids or aliases; empty: every model."),
    field("Requests per minute", rpm, "Empty: the server's default; 0: unlimited."),
    field("Tokens per minute", tpm, "Empty: the server's default; 0: unlimited."),
    h("div", { class: "field checkbox" }, admin, h("label", { for: admin.id }, "Admin key (manages keys, reads usage)")),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")),
    createResult,
  );
  createForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const payload = {
      tenant: tenant.value.trim(),
      name: name.value.trim(),
      models: modelsInput.value.split(",").map((m) => m.trim()).filter(Boolean),
      rpm: optionalNumber(rpm),
      tpm: optionalNumber(tpm),
      admin: admin.checked,
    };
    try {
      const answer = await api("POST", "/v1/admin/keys", { body: payload, signal });
      createResult.replaceChildren();
      createForm.reset();
      showSecret(`New key ${answer.key.id} for ${answer.key.tenant}`, answer.token);
      announce(`Key ${answer.key.id} created.`);
      await reload();
    } catch (err) {
      if (err.name !== "AbortError") {
        createResult.replaceChildren(errorBox(err));
      }
    }
  });

  // Tenant limits (the API sets them; it has no route that lists them).
  const limitTenant = h("input", { type: "text", name: "tenant", required: true, autocomplete: "off", list: "known-tenants" });
  const tenantRpm = limitInput("rpm");
  const tenantTpm = limitInput("tpm");
  const limitResult = h("div", { role: "status" });
  const limitForm = h(
    "form",
    { class: "grid-form", "aria-label": "Set tenant limits" },
    field("Tenant", limitTenant),
    field("Requests per minute", tenantRpm, "For the whole tenant, all its keys. Empty: the server's tenant default; 0: unlimited."),
    field("Tokens per minute", tenantTpm, "Empty: the server's tenant default; 0: unlimited."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Set limits")),
    limitResult,
  );
  limitForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const tenantName = limitTenant.value.trim();
    try {
      const answer = await api("PUT", `/v1/admin/tenants/${encodeURIComponent(tenantName)}`, {
        body: { rpm: optionalNumber(tenantRpm), tpm: optionalNumber(tenantTpm) },
        signal,
      });
      limitResult.replaceChildren(
        h("p", { class: "ok" }, `Tenant ${answer.name}: ${limit(answer.rpm)} requests per minute, ${limit(answer.tpm)} tokens per minute.`),
      );
    } catch (err) {
      if (err.name !== "AbortError") {
        limitResult.replaceChildren(errorBox(err));
      }
    }
  });

  filter.addEventListener("input", showKeys);
  showKeys();
  body.append(
    tenantList,
    secrets,
    section("Keys", field("Filter by tenant", filter), listMessage, listRegion),
    section("Create a key", createForm),
    section("Tenant limits", h("p", { class: "hint" }, "Sets a tenant's own limits instead of the server's tenant defaults."), limitForm),
  );
}
