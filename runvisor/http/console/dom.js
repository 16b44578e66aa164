// Small DOM helpers. Every piece of text goes into the page as a text node (textContent or
// createTextNode), never as HTML: a command's name or a run's output can only be shown.

const ROLE_RANK = { viewer: 1, operator: 2, admin: 3 };

/** True when `role` may do what `needed` may (roles are ordered: viewer < operator < admin). */
export function roleAtLeast(role, needed) {
  return (ROLE_RANK[role] || 0) >= ROLE_RANK[needed];
}

/**
 * Create an element. `props`: `class`, `text`, `on` ({event: handler}), `dataset`, and any
 * other key is set as an attribute (false/null/undefined: left out). Children may be strings
 * (text nodes), nodes, arrays of them, or null (skipped).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "on") for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let fieldSerial = 0;

/** A labelled form field: the label names the control, a hint describes it. */
export function field(labelText, control, hint) {
  control.id ||= `field-${++fieldSerial}`;
  const parts = [h("label", { for: control.id, text: labelText }), control];
  if (hint) {
    const hintEl = h("p", { class: "help", id: `${control.id}-hint`, text: hint });
    control.setAttribute("aria-describedby", hintEl.id);
    parts.push(hintEl);
  }
  return h("div", { class: "field" }, parts);
}

/** A <table> in a scrolling wrapper; `columns`: [{title, cell: row => node|string, class?}]. */
export function table(caption, columns, rows, emptyText) {
  if (rows.length === 0) return h("p", { class: "empty", text: emptyText });
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      {},
      h("caption", { class: "visually-hidden", text: caption }),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          columns.map((c) => h("th", { scope: "col", class: c.class, text: c.title })),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            {},
            columns.map((c) => h("td", { class: c.class, "data-label": c.title }, c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

/** A status badge; the colour is never the only cue (the word is always there). */
export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, text: status });
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** "1 h 2 min", "3.4 s": the time from `start` to `end` (or to now, while it runs). */
export function formatDuration(start, end) {
  if (!start) return "—";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  if (!(ms >= 0)) return "—";
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** How a run or attempt ended: "exit 3", "signal 15", or "—" while it runs. */
export function formatExit(item) {
  if (item.exit_code !== null && item.exit_code !== undefined) return `exit ${item.exit_code}`;
  if (item.signal !== null && item.signal !== undefined) return `signal ${item.signal}`;
  return "—";
}

export const TERMINAL = new Set(["succeeded", "failed", "stopped", "timed_out", "lost"]);

/** A number input's value: null when empty, else the number. */
export function numberOrNull(input) {
  const text = input.value.trim();
  return text === "" ? null : Number(text);
}
