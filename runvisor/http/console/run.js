// The Run view: a run's status, attempts and details, its live output (ANSI colours rendered,
// auto-scroll that pauses while the reader looks further up), and Stop (operator).

import { AnsiRenderer } from "./ansi.js";
import { ApiError } from "./api.js";
import {
  TERMINAL,
  field,
  formatDuration,
  formatExit,
  formatTime,
  h,
  numberOrNull,
  statusBadge,
  table,
} from "./dom.js";

const DETAILS_REFRESH_MS = 5000;
const POLL_MS = 1000;

export function renderRun(ctx, container, runId) {
  const statusSlot = h("span", { id: "run-status", role: "status" });
  const stopSlot = h("div");
  const details = h("div", { "aria-busy": "true" });
  const streamState = h("span", { id: "stream-state", class: "stream-state", "aria-live": "polite" });
  const trimmedNote = h("p", { class: "help", hidden: true });
  const output = h("pre", {
    id: "output",
    class: "output",
    tabindex: "0",
    role: "log",
    "aria-live": "off", // a busy run would flood a screen reader; the pane is read on demand
    "aria-label": `Output of run ${runId}`,
  });
  const followButton = h("button", {
    type: "button",
    id: "follow",
    class: "secondary",
    hidden: true,
    text: "Follow live output",
  });

  container.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/runs", text: "Runs" })),
    h("div", { class: "view-head" }, h("h1", { text: `Run #${runId}` }), statusSlot),
    stopSlot,
    h(
      "section",
      { "aria-labelledby": "output-title" },
      h(
        "div",
        { class: "view-head" },
        h("h2", { id: "output-title", text: "Output" }),
        streamState,
        followButton,
      ),
      trimmedNote,
      output,
    ),
    h(
      "section",
      { "aria-labelledby": "details-title" },
      h("h2", { id: "details-title", text: "Details" }),
      details,
    ),
  );

  // Auto-scroll: follow the end while the reader is there; scrolling up pauses it, scrolling
  // back to the end resumes it. Told by the direction, not the distance to the end: a scroll
  // event comes a frame late, when more output may already have made the pane longer.
  let follow = true;
  let lastTop = 0;
  const setFollow = (value) => {
    follow = value;
    followButton.hidden = value;
  };
  output.addEventListener("wheel", (event) => event.deltaY < 0 && setFollow(false), { passive: true });
  output.addEventListener("scroll", () => {
    const top = output.scrollTop;
    if (top < lastTop - 1) setFollow(false);
    else if (output.scrollHeight - top - output.clientHeight < 8) setFollow(true);
    lastTop = top;
  });
  followButton.addEventListener("click", () => {
    setFollow(true);
    output.scrollTop = output.scrollHeight;
    output.focus();
  });
  let scrollQueued = false;
  const renderer = new AnsiRenderer(output, {
    onTrim: (n) => {
      lastTop = 0; // text gone from the top moves the pane up: that is not the reader
      trimmedNote.hidden = false;
      trimmedNote.textContent = `The first ${n.toLocaleString()} characters are no longer shown here (GET /api/v1/runs/${runId}/output has them all).`;
    },
  });
  const write = (text) => {
    renderer.write(text);
    if (follow && !scrollQueued) {
      scrollQueued = true;
      requestAnimationFrame(() => {
        scrollQueued = false;
        if (follow) output.scrollTop = output.scrollHeight;
      });
    }
  };

  const abort = new AbortController();
  let run = null;
  let timer = null;
  let loading = null;
  const refresh = () => (loading ??= loadRun().finally(() => (loading = null)));
  // A status event carries the run itself; without one (polling), the run is read again.
  const onStatus = (seen) => (seen && seen.id === runId ? showRun(seen) : refresh());
  refresh();
  streamOutput(ctx, runId, {
    signal: abort.signal,
    write,
    onStatus,
    onState: (s) => (streamState.textContent = s),
  });
  return () => {
    abort.abort();
    clearTimeout(timer);
  };

  async function loadRun() {
    try {
      const seen = await ctx.api.getRun(runId);
      if (!abort.signal.aborted) showRun(seen);
    } catch (error) {
      if (!abort.signal.aborted) ctx.fail(error, details);
    }
  }

  function showRun(seen) {
    // An answer that left before the run's end may arrive after it: the end stays.
    if (run && TERMINAL.has(run.status) && !TERMINAL.has(seen.status)) return;
    run = seen;
    statusSlot.replaceChildren(statusBadge(run.status));
    showStop();
    details.replaceChildren(...runDetails(run));
    details.removeAttribute("aria-busy");
    // Read again now and then while it runs: its duration, pid and attempts move on.
    clearTimeout(timer);
    if (!TERMINAL.has(run.status)) timer = setTimeout(refresh, DETAILS_REFRESH_MS);
  }

  function showStop() {
    if (!ctx.can("operator") || TERMINAL.has(run.status)) {
      stopSlot.replaceChildren();
      return;
    }
    if (stopSlot.firstChild) return;
    const grace = h("input", {
      name: "grace_s",
      type: "number",
      min: "0",
      max: "3600",
      step: "any",
      placeholder: "node default",
    });
    const form = h(
      "form",
      { class: "stop-form", "aria-label": "Stop the run", novalidate: true },
      field("Grace (s)", grace, "SIGTERM now, SIGKILL after this long."),
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "submit", id: "stop-run", class: "danger", text: "Stop run" }),
      ),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await ctx.api.stopRun(runId, numberOrNull(grace));
        ctx.notify(`Stop of run ${runId} requested.`);
        refresh();
      } catch (error) {
        ctx.fail(error);
      }
    });
    stopSlot.replaceChildren(form);
  }
}

function runDetails(run) {
  const rows = [
    [
      "Command",
      h("a", { href: `#/runs?command_id=${run.command_id}`, text: `${run.command_id} (its runs)` }),
    ],
    ["Exit", formatExit(run)],
    ["Reason", run.reason ?? "—"],
    ["Duration", formatDuration(run.started_at, run.finished_at)],
    ["Attempts", String(run.attempts.length)],
    ["Restarts", String(run.restart_count)],
    ["Next attempt", run.next_attempt_at ? formatTime(run.next_attempt_at) : "—"],
    ["Node / pid", `${run.node ?? "—"} / ${run.pid ?? "—"}`],
    ["Created", formatTime(run.created_at)],
    ["Started", formatTime(run.started_at)],
    ["Finished", formatTime(run.finished_at)],
    ["Output", `${run.output_bytes.toLocaleString()} bytes${run.output_truncated ? " (truncated)" : ""}`],
    ["Variables set", run.env_keys.join(", ") || "—"],
    ["Timeout", run.timeout_s === null ? "none" : `${run.timeout_s} s`],
    [
      "Restart policy",
      `${run.restart.policy}, at most ${run.restart.max_restarts} in ${run.restart.window_s} s`,
    ],
  ];
  if (run.stop_requested_by)
    rows.push(["Stop requested", `by ${run.stop_requested_by}, ${formatTime(run.stop_requested_at)}`]);
  return [
    h(
      "dl",
      { class: "details" },
      rows.map(([term, value]) => [h("dt", { text: term }), h("dd", {}, value)]),
    ),
    h("pre", { class: "code-block", "aria-label": "Code" }, run.code),
    table(
      "Attempts",
      [
        { title: "Attempt", cell: (a) => String(a.attempt), class: "num" },
        { title: "Node", cell: (a) => a.node ?? "—" },
        { title: "Pid", cell: (a) => String(a.pid ?? "—"), class: "num" },
        { title: "Exit", cell: (a) => formatExit(a) },
        { title: "Reason", cell: (a) => a.reason ?? "—" },
        { title: "Duration", cell: (a) => formatDuration(a.started_at, a.finished_at) },
        { title: "Started", cell: (a) => formatTime(a.started_at) },
      ],
      run.attempts,
      "No attempt yet.",
    ),
  ];
}

/**
 * Read the run's output as it is written: its Server-Sent Events (GET …/events, read with
 * fetch to send the token), resumed with Last-Event-ID after a broken connection; on a node
 * without that route, GET …/output polled from the last offset.
 */
async function streamOutput(ctx, runId, { signal, write, onStatus, onState }) {
  let lastEventId = null;
  let failures = 0;
  while (!signal.aborted) {
    let ended = false;
    try {
      onState(failures ? "Reconnecting…" : "Connecting…");
      const finished = await ctx.api.events(runId, {
        lastEventId,
        signal,
        onEvent: (event) => {
          failures = 0;
          if (event.id !== null) lastEventId = event.id;
          if (event.event === "output") write(JSON.parse(event.data));
          // `status` and `end` carry the run, as GET /api/v1/runs/{id} answers it.
          else if (event.event === "status") onStatus(JSON.parse(event.data));
          else if (event.event === "end") {
            ended = true;
            onStatus(JSON.parse(event.data));
          }
          onState(ended ? "Ended" : "Live");
        },
      });
      if (ended || finished) {
        onState("Ended");
        return;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.code === "no_route")
        return pollOutput(ctx, runId, { signal, write, onStatus, onState });
      if (error instanceof ApiError && error.status !== 429 && error.status < 500) {
        onState("Not available");
        ctx.fail(error);
        return;
      }
    }
    failures += 1;
    onState("Reconnecting…");
    await sleep(Math.min(500 * 2 ** failures, 10_000), signal);
  }
}

async function pollOutput(ctx, runId, { signal, write, onStatus, onState }) {
  const decoder = new TextDecoder(); // bytes may split a character: it keeps the rest
  let offset = 0;
  let status = null;
  while (!signal.aborted) {
    try {
      const piece = await ctx.api.output(runId, offset, signal);
      if (piece.bytes.length) write(decoder.decode(piece.bytes, { stream: true }));
      offset += piece.bytes.length;
      if (piece.status !== status) onStatus();
      status = piece.status;
      if (TERMINAL.has(status) && offset >= piece.total) {
        write(decoder.decode());
        onState("Ended");
        return;
      }
      onState("Live (polling)");
    } catch (error) {
      if (signal.aborted) return;
      onState("Reconnecting…");
    }
    await sleep(POLL_MS, signal);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}
