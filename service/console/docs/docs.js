// GET /docs: Swagger UI over this gateway's own /openapi.json. "Try it out" calls this same origin (the document's
// `servers` names the default local address, which may not be where this page was loaded from). The key typed into
// Authorize lives only in this page; a key the console signed in with in this tab is filled in.
"use strict";

const KEY_STORAGE = "embeddings.apiKey"; // the console's session storage entry (console/web/api.js)

function showFailure(root, message) {
  const paragraph = document.createElement("p");
  paragraph.className = "docs-error";
  paragraph.setAttribute("role", "alert");
  paragraph.textContent = message;
  root.replaceChildren(paragraph);
}

async function loadDocument() {
  const response = await fetch("/openapi.json", { cache: "no-cache" });
  if (!response.ok) {
    throw new Error(`GET /openapi.json answered HTTP ${response.status}`);
  }
  return response.json();
}

async function start() {
  const root = document.getElementById("swagger-ui");
  let spec;
  try {
    spec = await loadDocument();
  } catch (err) {
    showFailure(root, `The API reference could not be loaded: ${err.message}.`);
    return;
  }
  spec.servers = [{ url: window.location.origin, description: "this gateway" }];
  const key = sessionStorage.getItem(KEY_STORAGE);
  let ui = null;
  ui = window.SwaggerUIBundle({
    spec,
    domNode: root,
    deepLinking: true,
    validatorUrl: null, // never calls validator.swagger.io
    persistAuthorization: false, // keys are not written to localStorage
    displayRequestDuration: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    onComplete: () => {
      if (key) {
        Promise.resolve().then(() => ui.preauthorizeApiKey("apiKey", key));
      }
    },
  });
}

start();
