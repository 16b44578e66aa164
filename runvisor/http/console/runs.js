// The Runs view: run history with filters (status, command), newest first, refreshed every few
// seconds while open.

import { pager } from "./commands.js";
import { TERMINAL, field, formatDuration, formatExit, formatTime, h, statusBadge, table } from "./dom.js";

const PAGE_SIZE = 50;
const REFRESH_MS = 3000;
const STATUS_FILTERS = [
  ["", "any"],
  ["active", "active (queued, running, restarting)"],
  ["terminal", "ended"],
  ...["queued", "running", "restarting", "succeeded", "failed", "stopped", "timed_out", "lost"].map((s) => [
    s,
    s,
  ]),
];

export function renderRuns(ctx, container, params) {
  const status = params.get("status") || "";
  const commandId = params.get("command_id") || "";
  const offset = Math.max(0, Number(params.get("offset")) || 0);

  const statusSelect = h(
    "select",
    { name: "status" },
    STATUS_FILTERS.map(([value, text]) => h("option", { value, text, selected: value === status })),
  );
  const commandInput = h("input", {
    name: "command_id",
    type: "number",
    min: "1",
    inputmode: "numeric",
    value: commandId,
    placeholder: "any",
  });
  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter runs", novalidate: true },
    field("Status", statusSelect),
    field("Command id", commandInput),
    h("div", { class: "buttons" }, h("button", { type: "submit", text: "Apply" })),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.go(`#/runs?${filterQuery(statusSelect.value, commandInput.value.trim())}`);
  });
  statusSelect.addEventListener("change", () => filters.requestSubmit());

  const list = h("div", { "aria-busy": "true" });
  container.append(h("div", { class: "view-head" }, h("h1", { text: "Runs" })), filters, list);

  let timer = null;
  let stopped = false;
  let shown = null;
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };

  async function load() {
    try {
      const page = await ctx.api.listRuns({ status, commandId, limit: PAGE_SIZE, offset });
      if (stopped) return;
      // Redrawn only when something changed (a running run's duration does), and never under
      // the keyboard focus of someone moving through the table.
      const key = JSON.stringify(page);
      const changed = key !== shown || page.items.some((r) => !TERMINAL.has(r.status));
      if (changed && !list.contains(document.activeElement)) {
        list.replaceChildren(runTable(page.items), pager(page, "#/runs", filterQuery(status, commandId)));
        shown = key;
      }
    } catch (error) {
      if (!stopped) ctx.fail(error, list);
    } finally {
      list.removeAttribute("aria-busy");
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }
}

function filterQuery(status, commandId) {
  const query = new URLSearchParams();
  if (status) query.set("status", status);
  if (commandId) query.set("command_id", commandId);
  return query;
}

function runTable(runs) {
  return table(
    "Runs",
    [
      { title: "Run", cell: (r) => h("a", { href: `#/runs/${r.id}`, text: `#${r.id}` }) },
      {
        title: "Command",
        cell: (r) => h("a", { href: `#/runs?command_id=${r.command_id}`, text: String(r.command_id) }),
      },
      { title: "Status", cell: (r) => statusBadge(r.status) },
      { title: "Exit", cell: (r) => formatExit(r) },
      { title: "Duration", cell: (r) => formatDuration(r.started_at, r.finished_at) },
      { title: "Attempts", cell: (r) => String(r.attempts.length), class: "num" },
      { title: "Restarts", cell: (r) => String(r.restart_count), class: "num" },
      { title: "Created", cell: (r) => formatTime(r.created_at) },
    ],
    runs,
    "No runs match.",
  );
}
