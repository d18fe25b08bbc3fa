// Small DOM helpers. Text always goes in as text (never parsed as HTML): model names, metadata and messages come
// from callers of the API.

import { ApiError } from "./api.js";

let lastId = 0;

/** A unique element id, for label/for and aria references. */
export function uid(prefix) {
  lastId += 1;
  return `${prefix}-${lastId}`;
}

/**
 * h("button", {class: "x", onclick: fn, disabled: true}, "text", child...): an element. Attributes that are
 * functions become listeners, `true` sets a boolean attribute, false/null/undefined are skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === false || value === null || value === undefined) {
      continue;
    }
    if (typeof value === "function") {
      element.addEventListener(name.replace(/^on/, ""), value);
    } else if (name === "class") {
      element.className = value;
    } else if (name === "value") {
      element.value = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** A labelled form field: <div><label>…</label><input>…<small hint></div>. */
export function field(label, control, hint = "") {
  if (!control.id) {
    control.id = uid("field");
  }
  const children = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hintId = uid("hint");
    control.setAttribute("aria-describedby", hintId);
    children.push(h("small", { id: hintId, class: "hint" }, hint));
  }
  return h("div", { class: "field" }, ...children);
}

/** A <select> of [value, label] pairs. */
export function select(name, options, selected) {
  return h(
    "select",
    { name },
    options.map(([value, label]) => h("option", { value, selected: String(value) === String(selected) }, label)),
  );
}

export function section(title, ...children) {
  const headingId = uid("section");
  return h("section", { class: "panel", "aria-labelledby": headingId }, h("h2", { id: headingId }, title), ...children);
}

/**
 * A table: columns are {label, cell(row) -> Node|string, numeric?}. `caption` names it for screen readers.
 */
export function table(caption, columns, rows, rowAttributes = () => ({})) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : null }, c.label)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h("tr", rowAttributes(row), columns.map((c) => h("td", { class: c.numeric ? "num" : null }, c.cell(row)))),
        ),
      ),
    ),
  );
}

const ERROR_TITLES = {
  0: "The server could not be reached",
  400: "The request was refused",
  401: "Your API key was not accepted",
  403: "Your API key may not do this",
  404: "Not found",
  413: "Too large",
  429: "Rate limited",
};

/** A readable error: what happened, the API's message and its code. */
export function errorBox(err) {
  if (!(err instanceof ApiError)) {
    return h("div", { class: "error", role: "alert" }, h("strong", {}, "Something went wrong in the console: "), String(err));
  }
  const title = ERROR_TITLES[err.status] || (err.status >= 500 ? "The server failed to answer" : "Error");
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, `${title}. `),
    err.message,
    " ",
    h("span", { class: "error-code" }, `(HTTP ${err.status || "—"}${err.code ? `, ${err.code}` : ""})`),
  );
}

/** Replace whatever error or notice a region shows. */
export function showIn(region, ...nodes) {
  region.replaceChildren(...nodes);
}

export function announce(message) {
  const announcer = document.getElementById("announcer");
  announcer.textContent = "";
  // A fresh text node after clearing makes screen readers speak repeated messages too.
  requestAnimationFrame(() => {
    announcer.textContent = message;
  });
}

export function formatNumber(value) {
  return value === undefined || value === null ? "—" : Number(value).toLocaleString("en-US");
}

/** Unix seconds as "2026-11-30". */
export function formatDay(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().slice(0, 10) : "—";
}

/** Unix seconds as "2026-11-30 14:05 UTC". */
export function formatTime(seconds) {
  if (!seconds) {
    return "—";
  }
  return `${new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

/**
 * A one-time secret (a new API key or webhook secret): shown once, with a copy button; "Done" removes it from the
 * page for good.
 */
export function secretPanel(title, secret, onDone = () => {}) {
  const input = h("input", { type: "text", readonly: true, value: secret, class: "secret", spellcheck: "false" });
  const copied = h("span", { class: "hint", role: "status" });
  const panel = h(
    "div",
    { class: "secret-panel", role: "region", "aria-label": title },
    h("h3", {}, title),
    h("p", {}, "Copy it now: it is shown only this once and cannot be read again."),
    field("Secret", input),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", onclick: () => copy(input, copied) }, "Copy"),
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: () => {
            panel.remove();
            onDone();
          },
        },
        "Done",
      ),
      copied,
    ),
  );
  requestAnimationFrame(() => {
    input.focus();
    input.select();
  });
  return panel;
}

/** Copy an input's or element's text; clipboard access needs a secure context, else the text is selected. */
export async function copy(source, status) {
  const text = "value" in source ? source.value : source.textContent;
  try {
    await navigator.clipboard.writeText(text);
    status.textContent = "Copied.";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(source);
    if ("select" in source) {
      source.select();
    } else {
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
    }
    status.textContent = "Selected: press Ctrl+C to copy.";
  }
}

/** A modal yes/no question (<dialog>: focus stays inside, Escape cancels). Resolves to true on confirmation. */
export function confirmDialog(message, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-label": confirmLabel },
      h("p", {}, message),
      h(
        "form",
        { method: "dialog", class: "actions" },
        h("button", { value: "cancel", class: "secondary", autofocus: true }, "Cancel"),
        h("button", { value: "confirm", class: "danger" }, confirmLabel),
      ),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "confirm");
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Accessible tabs: [{label, content: Node}] -> a tablist with arrow-key navigation and its panels. */
export function tabs(label, items) {
  const list = h("div", { role: "tablist", "aria-label": label, class: "tablist" });
  const panels = [];
  const buttons = items.map((item, i) => {
    const tabId = uid("tab");
    const panelId = uid("tabpanel");
    const panel = h("div", { role: "tabpanel", id: panelId, "aria-labelledby": tabId, tabindex: "0", hidden: i !== 0 }, item.content);
    panels.push(panel);
    return h(
      "button",
      {
        type: "button",
        role: "tab",
        id: tabId,
        "aria-controls": panelId,
        "aria-selected": i === 0 ? "true" : "false",
        tabindex: i === 0 ? "0" : "-1",
        onclick: () => choose(i),
        onkeydown: (event) => {
          const moves = { ArrowRight: 1, ArrowLeft: -1 };
          if (event.key in moves) {
            event.preventDefault();
            const next = (i + moves[event.key] + items.length) % items.length;
            choose(next);
            buttons[next].focus();
          }
        },
      },
      item.label,
    );
  });
  function choose(index) {
    buttons.forEach((button, i) => {
      button.setAttribute("aria-selected", i === index ? "true" : "false");
      button.tabIndex = i === index ? 0 : -1;
      panels[i].hidden = i !== index;
    });
  }
  list.append(...buttons);
  return h("div", { class: "tabs" }, list, ...panels);
}

/** A progress bar (role=progressbar) with its text; update(completed, total) changes both. */
export function progressBar(label) {
  const fill = h("div", { class: "progress-fill" });
  const bar = h(
    "div",
    { class: "progress", role: "progressbar", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0" },
    fill,
  );
  const text = h("span", { class: "progress-text" });
  const element = h("div", { class: "progress-row" }, bar, text);
  return {
    element,
    update(completed, total) {
      const percent = total > 0 ? Math.floor((100 * completed) / total) : 0;
      bar.setAttribute("aria-valuenow", String(percent));
      bar.setAttribute("aria-valuetext", `${percent}% (${completed} of ${total})`);
      fill.style.width = `${percent}%`;
      text.textContent = `${formatNumber(completed)} / ${formatNumber(total)} (${percent}%)`;
    },
  };
}
