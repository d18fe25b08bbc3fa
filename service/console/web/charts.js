// Stacked bar charts in plain SVG: one bar per day, one colour per series, a <title> on every segment, and a
// summary for screen readers (the page shows the same numbers in a table).

import { formatNumber, h, uid } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
// Okabe-Ito: told apart with the common colour-vision deficiencies.
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
const WIDTH = 760;
const HEIGHT = 210;
const MARGIN = { top: 12, right: 12, bottom: 36, left: 64 };

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    element.setAttribute(name, String(value));
  }
  element.append(...children);
  return element;
}

/** A round step for the axis: 1, 2 or 5 times a power of ten, at least 1 (the values are counts). */
function niceStep(value) {
  if (value <= 1) {
    return 1;
  }
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((m) => m >= value);
}

/**
 * series: [{name, values: number[] (one per day)}], at most PALETTE.length (the caller folds the rest).
 */
export function stackedBars(title, unit, days, series) {
  const titleId = uid("chart");
  const descId = uid("chart-desc");
  const totals = days.map((_, d) => series.reduce((sum, s) => sum + s.values[d], 0));
  const step = niceStep(Math.max(0, ...totals) / 4);
  const top = step * Math.max(1, Math.ceil(Math.max(0, ...totals) / step));
  const ticks = Array.from({ length: top / step + 1 }, (_, i) => i * step);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const slot = plotW / Math.max(1, days.length);
  const barW = Math.max(1, slot * 0.75);
  const y = (v) => MARGIN.top + plotH - (v / top) * plotH;
  const grid = ticks.map((tick) =>
    svg(
      "g",
      { class: "grid" },
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(tick), y2: y(tick) }),
      svg("text", { x: MARGIN.left - 6, y: y(tick) + 4, "text-anchor": "end" }, formatNumber(tick)),
    ),
  );
  const every = Math.ceil(days.length / 10);
  const labels = days
    .map((day, d) => [day, d])
    .filter(([, d]) => d % every === 0)
    .map(([day, d]) => svg("text", { x: MARGIN.left + slot * d + slot / 2, y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, day.slice(5)));
  const bars = [];
  days.forEach((day, d) => {
    let base = 0;
    series.forEach((s, i) => {
      const value = s.values[d];
      if (value > 0) {
        bars.push(
          svg(
            "rect",
            { x: MARGIN.left + slot * d + (slot - barW) / 2, y: y(base + value), width: barW, height: y(base) - y(base + value), fill: PALETTE[i % PALETTE.length] },
            svg("title", {}, `${day} · ${s.name}: ${formatNumber(value)} ${unit}`),
          ),
        );
      }
      base += value;
    });
  });
  const total = totals.reduce((a, b) => a + b, 0);
  const busiest = totals.indexOf(Math.max(...totals));
  const chart = svg(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-labelledby": `${titleId} ${descId}`, class: "chart" },
    svg("title", { id: titleId }, title),
    svg(
      "desc",
      { id: descId },
      `${formatNumber(total)} ${unit} from ${days[0]} to ${days[days.length - 1]}` +
        (total ? `; busiest day ${days[busiest]} with ${formatNumber(totals[busiest])}.` : "."),
    ),
    ...grid,
    ...bars,
    ...labels,
  );
  const legend = h(
    "ul",
    { class: "chart-legend", "aria-label": `${title}: series` },
    series.map((s, i) => {
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = PALETTE[i % PALETTE.length];
      return h("li", {}, swatch, s.name);
    }),
  );
  return h("figure", { class: "chart-figure" }, h("figcaption", {}, title), chart, legend);
}
