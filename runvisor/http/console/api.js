// The console's client of the v1 API. Every call sends the token in the Authorization header,
// never in a URL or a cookie (so no other site can make the browser send it: no CSRF).
// The live output is read with fetch rather than EventSource, which cannot send that header.

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

const NO_STORE = { cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };

export class Api {
  constructor(token) {
    this.token = token;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, ...extra };
  }

  async request(method, path, body) {
    const init = { ...NO_STORE, method, headers: this.headers({ Accept: "application/json" }) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    try {
      data = JSON.parse(text);
    } catch {
      // not JSON (a proxy's error page): the status says enough
    }
    if (!response.ok) throw errorOf(response, data, text);
    return data;
  }

  whoami() {
    return this.request("GET", "/api/v1/whoami");
  }

  listCommands({ limit = 50, offset = 0 } = {}) {
    return this.request("GET", `/api/v1/commands?${new URLSearchParams({ limit, offset })}`);
  }

  getCommand(id) {
    return this.request("GET", `/api/v1/commands/${id}`);
  }

  createCommand(body) {
    return this.request("POST", "/api/v1/commands", body);
  }

  deleteCommand(id) {
    return this.request("DELETE", `/api/v1/commands/${id}`);
  }

  startRun(commandId, body) {
    return this.request("POST", `/api/v1/commands/${commandId}/runs`, body);
  }

  listRuns({ status, commandId, limit = 50, offset = 0 } = {}) {
    const query = new URLSearchParams({ limit, offset });
    if (status) query.set("status", status);
    if (commandId) query.set("command_id", commandId);
    return this.request("GET", `/api/v1/runs?${query}`);
  }

  getRun(id) {
    return this.request("GET", `/api/v1/runs/${id}`);
  }

  stopRun(id, graceS) {
    return this.request("POST", `/api/v1/runs/${id}/stop`, graceS === null ? {} : { grace_s: graceS });
  }

  /** Output bytes from `offset`: {bytes: Uint8Array, total, status}. */
  async output(id, offset, signal) {
    const response = await fetch(`/api/v1/runs/${id}/output?offset=${offset}`, {
      ...NO_STORE,
      headers: this.headers(),
      signal,
    });
    if (!response.ok) throw errorOf(response, await response.json().catch(() => null), "");
    return {
      bytes: new Uint8Array(await response.arrayBuffer()),
      total: Number(response.headers.get("X-Output-Bytes")),
      status: response.headers.get("X-Run-Status"),
    };
  }

  /**
   * The run's Server-Sent Events, read with fetch: calls onEvent({event, id, data}) for each.
   * Resolves when the server ends the stream: true when there is nothing more to follow (204:
   * the run has ended and Last-Event-ID is at its end). Rejects on a refusal (ApiError) or a
   * network error.
   */
  async events(id, { lastEventId, signal, onEvent }) {
    const headers = this.headers({ Accept: "text/event-stream" });
    if (lastEventId !== null && lastEventId !== undefined) headers["Last-Event-ID"] = String(lastEventId);
    const response = await fetch(`/api/v1/runs/${id}/events`, { ...NO_STORE, headers, signal });
    if (!response.ok) throw errorOf(response, await response.json().catch(() => null), "");
    if (response.status === 204) return true;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new EventStreamParser(onEvent);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      parser.feed(value);
    }
  }
}

function errorOf(response, data, text) {
  const error = data && typeof data.error === "object" ? data.error : null;
  return new ApiError(
    response.status,
    error ? error.code : `http_${response.status}`,
    error ? error.message : text.trim() || response.statusText || `HTTP ${response.status}`,
    error ? error.details : [],
  );
}

/** The text/event-stream format (HTML Living Standard, "Server-sent events"), incrementally. */
export class EventStreamParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  feed(text) {
    this.buffer += text;
    let newline;
    while ((newline = this.buffer.search(/\r\n|\n|\r(?=[^\n])/)) !== -1) {
      const line = this.buffer.slice(0, newline);
      const skip = this.buffer.startsWith("\r\n", newline) ? 2 : 1;
      this.buffer = this.buffer.slice(newline + skip);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length > 0 || this.event) {
        this.onEvent({ event: this.event || "message", id: this.id, data: this.data.join("\n") });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") this.event = value;
    else if (name === "data") this.data.push(value);
    else if (name === "id") this.id = value;
  }
}
