// The operator console: sign-in, the role, and the views (#/commands, #/runs, #/runs/ID).
// The token is kept in this tab's sessionStorage (README "Operator console" says why) and sent
// only in the Authorization header; the URL holds the view alone.

import { Api, ApiError } from "./api.js";
import { renderCommands } from "./commands.js";
import { roleAtLeast } from "./dom.js";
import { renderRun } from "./run.js";
import { renderRuns } from "./runs.js";

const TOKEN_KEY = "runvisor.token";
const $ = (id) => document.getElementById(id);

let session = null; // {api, principal, role}
let disposeView = () => {};
let noticeTimer = null;

function notify(message, kind = "info") {
  const notice = $("notice");
  notice.textContent = message;
  notice.dataset.kind = kind;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (notice.textContent = ""), 6000);
}

/** Show an error where it belongs (`slot`) or as a notice; a refused token signs out. */
function fail(error, slot) {
  if (error instanceof ApiError && error.status === 401) {
    signOut("The token is no longer accepted; sign in again.");
    return;
  }
  const message =
    error instanceof ApiError ? `${error.message} (${error.status})` : `${error.message || error}`;
  if (slot) {
    const p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = message;
    slot.replaceChildren(p);
  } else {
    notify(message, "error");
  }
}

function context() {
  return {
    api: session.api,
    role: session.role,
    can: (needed) => roleAtLeast(session.role, needed),
    notify,
    fail,
    go: (hash) => {
      if (location.hash === hash) route();
      else location.hash = hash;
    },
    refresh: () => route(),
  };
}

function route() {
  if (!session) return;
  const hash = location.hash || "#/runs";
  if (!hash.startsWith("#/")) return; // an in-page link (the skip link), not a view
  const [path, query = ""] = hash.slice(1).split("?");
  const params = new URLSearchParams(query);
  disposeView();
  const view = $("view");
  view.replaceChildren();
  const runMatch = /^\/runs\/(\d+)$/.exec(path);
  let section = "runs";
  if (path === "/commands") {
    section = "commands";
    disposeView = renderCommands(context(), view, params);
  } else if (runMatch) {
    disposeView = renderRun(context(), view, Number(runMatch[1]));
  } else {
    disposeView = renderRuns(context(), view, params);
  }
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const heading = view.querySelector("h1");
  document.title = `${heading ? heading.textContent : "runvisor"} · runvisor console`;
}

async function signIn(token) {
  const api = new Api(token);
  const me = await api.whoami();
  session = { api, principal: me.principal, role: me.role };
  sessionStorage.setItem(TOKEN_KEY, token);
  $("principal").textContent = `${me.principal} (${me.role})`;
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  route();
  $("main").focus();
}

function signOut(message) {
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  disposeView();
  disposeView = () => {};
  $("view").replaceChildren();
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

function start() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    $("sign-in-error").textContent = "";
    if (!token) {
      $("sign-in-error").textContent = "Enter a token.";
      input.focus();
      return;
    }
    try {
      await signIn(token);
      input.value = "";
    } catch (error) {
      $("sign-in-error").textContent =
        error instanceof ApiError && error.status === 401
          ? "That token is not valid."
          : `Cannot sign in: ${error.message}`;
      input.focus();
    }
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    $("main").focus();
  });
  window.addEventListener("hashchange", route);

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved).catch(() => signOut("Sign in again."));
  else signOut();
}

start();
