// The Commands view: list commands; create one (admin), delete one (admin), start a run with
// its variables and overrides (operator). A button the role may not use is not shown at all;
// the server refuses the call anyway.

import { field, h, numberOrNull, table } from "./dom.js";

const PAGE_SIZE = 50;
const POLICIES = ["never", "on-failure", "always"];

export function renderCommands(ctx, container, params) {
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const list = h("div", { "aria-busy": "true" });
  const newButton = ctx.can("admin")
    ? h("button", { type: "button", id: "new-command", "aria-expanded": "false", text: "New command" })
    : null;
  const formSlot = h("div");
  container.append(
    h("div", { class: "view-head" }, h("h1", { text: "Commands" }), newButton),
    formSlot,
    list,
  );
  if (newButton) {
    newButton.addEventListener("click", () => {
      const open = formSlot.firstChild === null;
      formSlot.replaceChildren(...(open ? [createForm(ctx, () => ctx.refresh())] : []));
      newButton.setAttribute("aria-expanded", String(open));
      if (open) formSlot.querySelector("input, textarea").focus();
    });
  }
  load();
  return () => {};

  async function load() {
    try {
      const page = await ctx.api.listCommands({ limit: PAGE_SIZE, offset });
      list.replaceChildren(commandTable(ctx, page.items), pager(page, "#/commands"));
    } catch (error) {
      ctx.fail(error, list);
    } finally {
      list.removeAttribute("aria-busy");
    }
  }
}

function commandTable(ctx, commands) {
  return table(
    "Commands",
    [
      { title: "Id", cell: (c) => String(c.id), class: "num" },
      { title: "Name", cell: (c) => c.name || "—" },
      { title: "Code", cell: (c) => h("code", { class: "code-preview", title: c.code, text: c.code }) },
      { title: "Timeout", cell: (c) => (c.timeout_s === null ? "none" : `${c.timeout_s} s`) },
      { title: "Restart", cell: (c) => c.restart.policy },
      { title: "Variables", cell: (c) => Object.keys(c.env).join(", ") || "—" },
      { title: "Actions", cell: (c) => actions(ctx, c), class: "actions" },
    ],
    commands,
    "No commands yet.",
  );
}

function actions(ctx, command) {
  const label = command.name || `command ${command.id}`;
  return [
    ctx.can("operator")
      ? h("button", {
          type: "button",
          class: "run-command",
          "aria-label": `Run ${label}`,
          text: "Run…",
          on: { click: () => openRunDialog(ctx, command) },
        })
      : null,
    h("a", { href: `#/runs?command_id=${command.id}`, "aria-label": `Runs of ${label}`, text: "Runs" }),
    ctx.can("admin")
      ? h("button", {
          type: "button",
          class: "danger",
          "aria-label": `Delete ${label}`,
          text: "Delete",
          on: {
            click: async () => {
              if (!window.confirm(`Delete ${label}? Its runs stay as history.`)) return;
              try {
                await ctx.api.deleteCommand(command.id);
                ctx.notify(`Deleted ${label}.`);
                ctx.refresh();
              } catch (error) {
                ctx.fail(error);
              }
            },
          },
        })
      : null,
  ];
}

export function pager(page, base, extra = new URLSearchParams()) {
  const first = page.total === 0 ? 0 : page.offset + 1;
  const last = page.offset + page.items.length;
  const link = (offset, text) => {
    const query = new URLSearchParams(extra);
    query.set("offset", String(offset));
    return h("a", { class: "button secondary", href: `${base}?${query}`, text });
  };
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    page.offset > 0 ? link(Math.max(0, page.offset - page.limit), "Previous") : null,
    h("span", { text: `${first}–${last} of ${page.total}` }),
    last < page.total ? link(last, "Next") : null,
  );
}

/** The new-command form (admin). */
function createForm(ctx, done) {
  const name = h("input", { name: "name", maxlength: "200", autocomplete: "off" });
  const code = h("textarea", { name: "code", required: true, rows: "5", spellcheck: "false", class: "mono" });
  const description = h("input", { name: "description", autocomplete: "off" });
  const timeout = h("input", {
    name: "timeout_s",
    type: "number",
    min: "0",
    step: "any",
    inputmode: "decimal",
  });
  const stuck = h("input", {
    name: "stuck_after_s",
    type: "number",
    min: "0",
    step: "any",
    inputmode: "decimal",
  });
  const policy = h(
    "select",
    { name: "policy" },
    POLICIES.map((p) => h("option", { value: p, text: p })),
  );
  const maxRestarts = h("input", { name: "max_restarts", type: "number", min: "0", max: "1000", value: "3" });
  const backoff = h("input", { name: "backoff_s", type: "number", min: "0", step: "any", value: "1" });
  const env = h("textarea", { name: "env", rows: "3", spellcheck: "false", class: "mono" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h(
    "form",
    { class: "panel", "aria-label": "New command", novalidate: true },
    h("h2", { text: "New command" }),
    field("Name", name),
    field("Code (bash)", code, "Runs as bash -c CODE."),
    field("Description", description),
    h(
      "div",
      { class: "row" },
      field("Timeout (s)", timeout, "Empty: none."),
      field("Stuck after (s)", stuck, "No output for this long. Empty: never."),
    ),
    h(
      "div",
      { class: "row" },
      field("Restart policy", policy),
      field("Max restarts", maxRestarts),
      field("Backoff (s)", backoff),
    ),
    field("Variables", env, "One per line: NAME=default, or NAME alone for no default."),
    h("div", { class: "buttons" }, h("button", { type: "submit", text: "Create command" })),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      const body = {
        code: code.value,
        description: description.value,
        timeout_s: numberOrNull(timeout),
        stuck_after_s: numberOrNull(stuck),
        restart: {
          policy: policy.value,
          max_restarts: numberOrNull(maxRestarts) ?? 3,
          backoff_s: numberOrNull(backoff) ?? 1,
        },
        env: parseEnv(env.value),
      };
      if (name.value.trim()) body.name = name.value.trim();
      const command = await ctx.api.createCommand(body);
      ctx.notify(`Created command ${command.id}.`);
      done(command);
    } catch (failure) {
      ctx.fail(failure, error);
    }
  });
  return form;
}

function parseEnv(text) {
  const env = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const eq = line.indexOf("=");
    if (eq === -1) env[line] = null;
    else env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return env;
}

/** Start a run (operator): the command's variables, and overrides of its bounds. */
function openRunDialog(ctx, command) {
  const label = command.name || `command ${command.id}`;
  const envInputs = Object.entries(command.env).map(([key, value]) => [
    key,
    h("input", {
      name: `env-${key}`,
      value: value ?? "",
      placeholder: value === null ? "(no default)" : null,
      autocomplete: "off",
    }),
  ]);
  const timeout = h("input", {
    name: "timeout_s",
    type: "number",
    min: "0",
    step: "any",
    placeholder: placeholderOf(command.timeout_s),
  });
  const stuck = h("input", {
    name: "stuck_after_s",
    type: "number",
    min: "0",
    step: "any",
    placeholder: placeholderOf(command.stuck_after_s),
  });
  const policy = h(
    "select",
    { name: "policy" },
    h("option", { value: "", text: `the command's (${command.restart.policy})` }),
    POLICIES.map((p) => h("option", { value: p, text: p })),
  );
  const error = h("p", { class: "error", role: "alert" });
  const cancel = h("button", { type: "button", class: "secondary", text: "Cancel" });
  const dialog = h(
    "dialog",
    { "aria-labelledby": "run-dialog-title" },
    h(
      "form",
      { novalidate: true },
      h("h2", { id: "run-dialog-title", text: `Run ${label}` }),
      h("pre", { class: "code-block", text: command.code }),
      envInputs.length
        ? h(
            "fieldset",
            {},
            h("legend", { text: "Variables" }),
            envInputs.map(([key, input]) => field(key, input)),
          )
        : null,
      h(
        "fieldset",
        {},
        h("legend", { text: "Overrides (empty: the command's)" }),
        h("div", { class: "row" }, field("Timeout (s)", timeout), field("Stuck after (s)", stuck)),
        field("Restart policy", policy, "An operator may only tighten the command's bounds."),
      ),
      h("div", { class: "buttons" }, h("button", { type: "submit", text: "Start run" }), cancel),
      error,
    ),
  );
  cancel.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const body = {};
    // Only what differs from the command's default: an untouched field leaves it to the node.
    const env = envInputs.filter(([key, input]) => input.value !== (command.env[key] ?? ""));
    if (env.length) body.env = Object.fromEntries(env.map(([key, input]) => [key, input.value]));
    if (numberOrNull(timeout) !== null) body.timeout_s = numberOrNull(timeout);
    if (numberOrNull(stuck) !== null) body.stuck_after_s = numberOrNull(stuck);
    if (policy.value) body.restart = { ...command.restart, policy: policy.value };
    try {
      const run = await ctx.api.startRun(command.id, body);
      dialog.close();
      ctx.notify(`Started run ${run.id}.`);
      ctx.go(`#/runs/${run.id}`);
    } catch (failure) {
      ctx.fail(failure, error);
    }
  });
  document.body.append(dialog);
  dialog.showModal();
}

function placeholderOf(seconds) {
  return seconds === null ? "none" : `${seconds}`;
}
