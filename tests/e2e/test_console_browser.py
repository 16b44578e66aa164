"""The operator console in a real headless Chromium (Playwright driving Debian's `chromium`),
against a real node: sign in, create a command, start a run, watch its lines arrive, stop it.

Needs the `browser` extra (Playwright) and a `chromium` on PATH. Without them the test is
skipped, saying which is missing; under CI (CI=true) it fails instead: CI must run it.
The screenshot is saved as artifacts/console.png (and artifacts/console-phone.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fix_service import ADMIN, OPERATOR, VIEWER, Service

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
TIMEOUT_MS = 30_000  # the 2-core machine: generous, and only ever waited to the first success

# A line with colours, and one that is HTML: both must show as text, the HTML never run.
TICKER = (
    'printf "\\033[1;32mready\\033[0m\\n"; echo "greeting: $GREETING"; '
    'echo "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"; '
    "for i in $(seq 1 600); do echo tick $i; sleep 0.25; done"
)
# Enough lines to scroll, then a slow trickle: the pane must stay where the reader put it.
SCROLLER = "seq 1 400 | sed 's/^/line /'; for i in $(seq 1 600); do echo more $i; sleep 0.2; done"


def _chromium() -> str:
    """Chromium's path, or skip (fail under CI) naming what is missing."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "Playwright is not installed: pip install -e '.[test,browser]'"
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if reason is None and path is None:
        reason = "no chromium on PATH (Debian: apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"the browser test must run under CI: {reason}")
        pytest.skip(f"browser test: {reason}")
    assert path is not None
    return path


def test_without_a_browser_the_test_is_skipped_and_under_ci_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^browser test: "):
        _chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run under CI"):
        _chromium()


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Never `playwright install`: Debian's chromium, whatever Playwright bundles.
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """New pages that record the browser's errors (CSP violations included)."""
    pages: list[tuple[Any, list[str]]] = []

    def make(**options: Any) -> Any:
        page = browser.new_page(**options)
        page.set_default_timeout(TIMEOUT_MS)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        page.problems = problems
        pages.append((page, problems))
        return page

    yield make
    for page, _ in pages:
        page.close()


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(base + "/")
    field = page.get_by_label("Token")
    field.fill(token)
    field.press("Enter")  # the keyboard is enough
    page.locator("#principal").wait_for()
    assert token not in page.url


def wait_for_output(page: Any, text: str) -> None:
    """Until the output pane holds `text` (one line of it: the pane is a few text nodes)."""
    page.wait_for_function(
        "(text) => document.getElementById('output')?.textContent.includes(text)", arg=text
    )


UNLABELLED = """() => [...document.querySelectorAll("input, select, textarea")]
    .filter((el) => el.offsetParent !== null && el.labels.length === 0
                    && !el.getAttribute("aria-label"))
    .map((el) => el.name || el.id)"""


def unlabelled_controls(page: Any) -> list[str]:
    """Visible form controls that no label names (a screen reader could not say what they are)."""
    return list(page.evaluate(UNLABELLED))


def real_problems(page: Any) -> list[str]:
    """Errors the browser reported: script errors, failed requests, CSP violations."""
    return list(page.problems)


@pytest.mark.slow
def test_an_admin_creates_a_command_runs_it_watches_it_and_stops_it(
    open_page: Any, service: Service
) -> None:
    page = open_page(viewport={"width": 1280, "height": 900})
    sign_in(page, service.api.base, ADMIN)
    assert page.locator("#principal").inner_text().startswith("admin:")

    page.get_by_role("link", name="Commands").click()
    page.get_by_role("button", name="New command").click()
    assert unlabelled_controls(page) == []
    page.get_by_label("Name").fill("ticker <b>bold</b>")
    page.get_by_label("Code (bash)").fill(TICKER)
    page.get_by_label("Variables").fill("GREETING")  # declared, no default
    page.get_by_role("button", name="Create command").click()
    # The name is text, not markup.
    page.get_by_role("button", name="Run ticker <b>bold</b>").click()
    page.get_by_role("button", name="Start run").wait_for()
    assert unlabelled_controls(page) == []
    dialog = page.locator("dialog")
    dialog.get_by_label("GREETING").fill("hello from the console")
    dialog.get_by_label("Timeout (s)").fill("120")
    dialog.get_by_role("button", name="Start run").click()

    output = page.locator("#output")
    wait_for_output(page, "tick 2\n")
    page.locator("#run-status").get_by_text("running").wait_for()
    wait_for_output(page, "tick 4\n")  # more lines keep arriving
    # Read from the run's event stream (GET …/events through fetch), not by polling.
    assert page.locator("#stream-state").inner_text() == "Live"
    run_id = int(page.url.rsplit("/", 1)[1])
    run = service.api.run(run_id)
    assert run["status"] == "running"
    assert (run["env_keys"], run["timeout_s"]) == (["GREETING"], 120.0)  # the run's overrides
    assert "greeting: hello from the console\n" in output.inner_text()

    # ANSI colours as classes; the HTML line as its characters, never as elements or script.
    assert output.locator("span.ansi-fg-2.ansi-bold").inner_text() == "ready"
    assert "<img src=x onerror=window.__pwned=1><script>" in output.inner_text()
    assert output.locator("img, script").count() == 0
    assert page.evaluate("window.__pwned") is None

    page.get_by_role("button", name="Stop run").click()
    page.locator("#run-status").get_by_text("stopped").wait_for()
    assert service.api.run(run_id)["status"] == "stopped"
    page.get_by_role("button", name="Stop run").wait_for(state="detached")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)

    # The run is in the history, with the filters.
    page.goto(f"{service.api.base}/#/runs?status=stopped")
    row = page.locator("tbody tr").filter(has_text=f"#{run_id}")
    row.get_by_text("stopped").wait_for()
    assert "signal 15" in row.inner_text()

    # Reloading keeps the tab signed in (sessionStorage); the token is in no URL and no log line.
    page.reload()
    page.locator("#principal").wait_for()
    assert ADMIN not in page.url
    assert ADMIN not in service.log_path.read_text(errors="replace")
    assert real_problems(page) == []


@pytest.mark.slow
def test_auto_scroll_pauses_while_the_reader_looks_back(open_page: Any, service: Service) -> None:
    run = service.api.run_code(SCROLLER)
    page = open_page(viewport={"width": 1280, "height": 900})
    sign_in(page, service.api.base, OPERATOR)
    page.goto(f"{service.api.base}/#/runs/{run['id']}")
    output = page.locator("#output")
    wait_for_output(page, "more 2\n")
    # Functions, not expressions: the page's CSP forbids eval, which runs a bare expression.
    at_end = "(el) => el.scrollHeight - el.scrollTop - el.clientHeight < 8"
    page.wait_for_function(
        "() => { const el = document.getElementById('output');"
        " return el.scrollHeight - el.scrollTop - el.clientHeight < 8; }"
    )  # following the end

    output.hover()
    page.mouse.wheel(0, -2000)
    follow = page.get_by_role("button", name="Follow live output")
    follow.wait_for()
    held = output.evaluate("(el) => el.scrollTop")
    seen = output.inner_text().count("more ")
    page.wait_for_function(
        "(seen) => document.getElementById('output').textContent.split('more ').length - 1 > seen",
        arg=seen + 2,
    )
    assert output.evaluate("(el) => el.scrollTop") == held  # new lines did not move it
    assert not output.evaluate(at_end)

    follow.click()
    assert output.evaluate(at_end)
    follow.wait_for(state="hidden")


@pytest.mark.slow
def test_each_role_sees_only_the_buttons_it_may_use(open_page: Any, service: Service) -> None:
    command = service.api.create_command("sleep 300", name="sleeper")
    run = service.api.start_run(command["id"])
    expected = {  # role: (New command, Run…, Delete, Stop run)
        VIEWER: (0, 0, 0, 0),
        OPERATOR: (0, 1, 0, 1),
        ADMIN: (1, 1, 1, 1),
    }
    for token, (new, start, delete, stop) in expected.items():
        page = open_page(viewport={"width": 390, "height": 844})  # a phone
        sign_in(page, service.api.base, token)
        page.get_by_role("link", name="Commands").click()
        page.get_by_text("sleep 300").wait_for()
        assert page.get_by_role("button", name="New command").count() == new
        assert page.get_by_role("button", name="Run sleeper").count() == start
        assert page.get_by_role("button", name="Delete sleeper").count() == delete
        page.goto(f"{service.api.base}/#/runs/{run['id']}")
        page.locator("#run-status").get_by_text("running").wait_for()
        assert page.get_by_role("button", name="Stop run").count() == stop
        # Nothing is wider than the phone's screen.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert real_problems(page) == []
        if token == VIEWER:
            # Hidden is not all: the server refuses the viewer's token too.
            status = page.evaluate(
                """async ([id, token]) => (await fetch(`/api/v1/runs/${id}/stop`, {
                       method: "POST", headers: {Authorization: `Bearer ${token}`}})).status""",
                [run["id"], token],
            )
            assert status == 403
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "console-phone.png"), full_page=True)
    assert service.api.run(run["id"])["status"] == "running"


ANSI_CASES = """async () => {
  const { AnsiRenderer } = await import("/console/ansi.js");
  const render = (...chunks) => {
    const pane = document.createElement("pre");
    const renderer = new AnsiRenderer(pane);
    for (const chunk of chunks) renderer.write(chunk);
    return [...pane.childNodes].map((n) => [n.nodeName === "#text" ? "" : n.className,
                                            n.style ? n.style.color : "", n.textContent]);
  };
  return {
    split: render("a\\x1b[3", "1mred\\x1b[", "0m b"),
    bright_bold: render("\\x1b[1;94mx\\x1b[22;39my"),
    palette: render("\\x1b[38;5;196mp\\x1b[38;2;1;2;3mt"),
    dropped: render("\\x1b[2J\\x1b[Hcls\\x1b]0;title\\x07!"),
    inverse: render("\\x1b[7mi"),
    html: render("<b>&amp;</b>"),
  };
}"""

SSE_CASES = """async () => {
  const { EventStreamParser } = await import("/console/api.js");
  const events = [];
  const parser = new EventStreamParser((e) => events.push(e));
  for (const chunk of [": heartbeat\\n\\n", "event: output\\r\\nid: 5\\r\\nda",
                       "ta: \\"a\\"\\r\\n\\r", "\\nevent: status\\ndata: 1\\ndata: 2\\n\\n",
                       "data: x\\n"]) {
    parser.feed(chunk);
  }
  return events;
}"""


def test_the_ansi_and_event_stream_parsers(open_page: Any, service: Service) -> None:
    """The console's own modules, run in the browser on the edge cases a stream brings."""
    page = open_page()
    page.goto(service.api.base + "/")
    cases = page.evaluate(ANSI_CASES)
    assert cases["split"] == [["", "", "a"], ["ansi-fg-1", "", "red"], ["", "", " b"]]
    assert cases["bright_bold"] == [["ansi-fg-12 ansi-bold", "", "x"], ["", "", "y"]]
    assert cases["palette"] == [["", "rgb(255, 0, 0)", "p"], ["", "rgb(1, 2, 3)", "t"]]
    assert cases["dropped"] == [["", "", "cls!"]]
    assert cases["inverse"] == [["ansi-fg-default-bg ansi-bg-default-fg", "", "i"]]
    assert cases["html"] == [["", "", "<b>&amp;</b>"]]
    assert page.evaluate(SSE_CASES) == [
        {"event": "output", "id": "5", "data": '"a"'},
        {"event": "status", "id": None, "data": "1\n2"},
    ]  # the comment is no event; the last one is not finished without its blank line
    assert real_problems(page) == []
