// A live list of long-running work (async jobs today; OpenAI Batch API batches can be another kind): pages of
// items, progress bars, and polling while any shown item is still running. A kind describes its items:
//   title, caption
//   load({after, signal}) -> {items, hasMore, lastId}   one page, newest first
//   get(id, signal) -> item                               one item, fresh
//   id(item), active(item)                                its id; whether it may still change
//   columns: [{label, key(item) -> string, cell(item, controls) -> Node|string, numeric?}]
//     a cell is rebuilt only when its key changes (so a focused button survives polling)
// controls (given to cells): {replace(item), report(err|null), signal}

import { errorBox, h } from "./ui.js";

const POLL_MS = 1000;
const RELIST_EVERY = 5; // polls: new items appear within ~5 s

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("left the page", "AbortError"));
    });
  });
}

export async function workList(kind, signal) {
  const rows = new Map(); // id -> {tr, cells: [{td, key}], item}
  const tbody = h("tbody", {});
  const message = h("div", {});
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const empty = h("p", { hidden: true }, "None yet.");
  let lastId = "";

  const controls = {
    signal,
    replace: (item) => upsert(item, false),
    report: (err) => message.replaceChildren(...(err ? [errorBox(err)] : [])),
  };

  function render(row) {
    kind.columns.forEach((column, i) => {
      const key = column.key(row.item);
      if (row.cells[i].key !== key) {
        row.cells[i].key = key;
        const content = column.cell(row.item, controls);
        row.cells[i].td.replaceChildren(...[content].flat().filter((c) => c !== null && c !== undefined));
      }
    });
  }

  function upsert(item, atEnd) {
    const id = kind.id(item);
    let row = rows.get(id);
    if (!row) {
      const cells = kind.columns.map((c) => ({ td: h("td", { class: c.numeric ? "num" : null }), key: null }));
      row = { tr: h("tr", { "data-id": id }, cells.map((c) => c.td)), cells, item };
      rows.set(id, row);
      if (atEnd) {
        tbody.append(row.tr);
      } else {
        tbody.prepend(row.tr);
      }
    }
    row.item = item;
    render(row);
    empty.hidden = rows.size > 0;
  }

  async function loadPage(after) {
    const page = await kind.load({ after, signal });
    page.items.forEach((item) => upsert(item, true));
    if (after || !lastId) {
      lastId = page.lastId || lastId;
      more.hidden = !page.hasMore;
    }
  }

  /** The first page again: new items go on top, known ones are updated. */
  async function relist() {
    const page = await kind.load({ after: "", signal });
    [...page.items].reverse().forEach((item) => upsert(item, false));
  }

  async function poll() {
    for (let tick = 1; !signal.aborted; tick += 1) {
      await sleep(POLL_MS, signal);
      if (document.hidden) {
        continue;
      }
      try {
        const running = [...rows.values()].map((r) => r.item).filter(kind.active);
        const fresh = await Promise.all(running.map((item) => kind.get(kind.id(item), signal)));
        fresh.forEach((item) => upsert(item, false));
        if (tick % RELIST_EVERY === 0) {
          await relist();
        }
        controls.report(null);
      } catch (err) {
        if (err.name === "AbortError") {
          return;
        }
        controls.report(err);
      }
    }
  }

  more.addEventListener("click", async () => {
    try {
      await loadPage(lastId);
    } catch (err) {
      if (err.name !== "AbortError") {
        controls.report(err);
      }
    }
  });

  await loadPage("");
  poll().catch(() => {});
  const head = h("tr", {}, kind.columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : null }, c.label)));
  return h(
    "div",
    { class: "worklist" },
    message,
    h("div", { class: "table-wrap" }, h("table", {}, h("caption", { class: "visually-hidden" }, kind.caption), h("thead", {}, head), tbody)),
    empty,
    more,
  );
}
