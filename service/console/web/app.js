// The console: sign-in, navigation between pages (hash routes such as #/models), and the page lifecycle (each page
// gets an AbortSignal that fires when the operator leaves it, which stops its requests and polling).

import { ApiError, api, forgetKey, maskedKey, probeAdmin, signedIn, storeKey } from "./api.js";
import * as jobs from "./pages/jobs.js";
import * as keys from "./pages/keys.js";
import * as models from "./pages/models.js";
import * as playground from "./pages/playground.js";
import * as usage from "./pages/usage.js";
import { announce, errorBox, field, h } from "./ui.js";

// `admin`: shown only to admin keys (the API refuses the data to others anyway).
const PAGES = [
  { path: "models", title: "Models", page: models },
  { path: "playground", title: "Playground", page: playground },
  { path: "usage", title: "Usage", page: usage, admin: true },
  { path: "keys", title: "Keys and tenants", page: keys, admin: true },
  { path: "jobs", title: "Jobs and webhooks", page: jobs },
];
const session = { admin: false };
let leave = null; // aborts the shown page

const main = document.getElementById("main");

function parseRoute() {
  const [path, query = ""] = window.location.hash.replace(/^#\/?/, "").split("?");
  return { path, params: new URLSearchParams(query) };
}

function showNav(current) {
  const nav = document.getElementById("nav");
  const links = PAGES.filter((p) => !p.admin || session.admin).map((p) =>
    h("li", {}, h("a", { href: `#/${p.path}`, "aria-current": p === current ? "page" : null }, p.title)),
  );
  nav.replaceChildren(h("ul", {}, links));
  nav.hidden = false;
  document.getElementById("who").textContent = `Signed in with ${maskedKey()}${session.admin ? " (admin)" : ""}`;
  document.getElementById("session").hidden = false;
}

async function showPage(focus) {
  if (!signedIn()) {
    showSignIn();
    return;
  }
  const { path, params } = parseRoute();
  const page = PAGES.find((p) => p.path === path) || PAGES[0];
  leave?.abort();
  const controller = new AbortController();
  leave = controller;
  showNav(page);
  document.title = `${page.title} · Embeddings console`;
  const heading = h("h1", { tabindex: "-1" }, page.title);
  const body = h("div", { class: "page", "data-page": page.path, "aria-busy": "true" });
  main.replaceChildren(heading, body);
  if (focus) {
    heading.focus();
  }
  if (page.admin && !session.admin) {
    body.append(h("p", { class: "notice" }, "This page is for admin keys. The API's answer to your key:"));
  }
  try {
    await page.page.render(body, { params, signal: controller.signal, session });
  } catch (err) {
    if (err.name !== "AbortError") {
      body.append(errorBox(err));
      if (err instanceof ApiError && err.status === 401) {
        body.append(h("p", {}, h("button", { type: "button", onclick: signOut }, "Sign in again")));
      }
    }
  } finally {
    body.setAttribute("aria-busy", "false");
  }
}

function showSignIn(problem = null) {
  leave?.abort();
  document.getElementById("nav").hidden = true;
  document.getElementById("session").hidden = true;
  document.title = "Sign in · Embeddings console";
  const input = h("input", { type: "password", name: "key", autocomplete: "off", spellcheck: "false", placeholder: "sk-…" });
  const result = h("div", { class: "form-result" }, problem ? errorBox(problem) : null);
  const form = h(
    "form",
    { class: "panel sign-in", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title", tabindex: "-1" }, "Sign in"),
    h(
      "p",
      {},
      "Sign in with an API key. It stays in this browser tab only (session storage) and is sent only to this server. ",
      "A server running open (no keys, on loopback) takes an empty key.",
    ),
    field("API key", input),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")),
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    storeKey(input.value.trim());
    try {
      await api("GET", "/v1/models");
      session.admin = await probeAdmin();
    } catch (err) {
      forgetKey();
      result.replaceChildren(errorBox(err));
      input.focus();
      return;
    }
    announce("Signed in.");
    if (!parseRoute().path) {
      window.location.hash = "#/models";
    } else {
      showPage(true);
    }
  });
  main.replaceChildren(form);
  input.focus();
}

function signOut() {
  forgetKey();
  session.admin = false;
  announce("Signed out.");
  showSignIn();
}

async function start() {
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("skip-link").addEventListener("click", (event) => {
    event.preventDefault(); // the hash holds the route
    main.focus();
  });
  window.addEventListener("hashchange", () => showPage(true));
  if (signedIn()) {
    try {
      session.admin = await probeAdmin();
    } catch (err) {
      forgetKey();
      showSignIn(err);
      return;
    }
  }
  showPage(false);
}

start();
