"""The operator console's files and GET /api/v1/whoami, over real HTTP (no browser: see
test_console_browser.py for the page itself)."""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path

import pytest

from runvisor.http import console_files
from tests.fix_service import ADMIN, OPERATOR, VIEWER, Api

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_DIR = ROOT / "runvisor" / "http" / "console"
SCRIPTS = sorted(CONSOLE_DIR.glob("*.js"))


def test_the_page_is_served_without_a_token_under_a_strict_policy(api: Api) -> None:
    response = api.get("/", token="")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval, no other origin
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'none'"
    assert "unsafe" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "/console/app.js" in response.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")],
)
def test_each_file_is_served_with_its_type_and_the_policy(
    api: Api, name: str, media_type: str
) -> None:
    response = api.get(f"/console/{name}", token="")
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == media_type
    assert response.content == (CONSOLE_DIR / name).read_bytes()
    assert response.headers["Content-Security-Policy"] == console_files.CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    "path", ["/console/nope.js", "/console/index.html", "/console/..%2Fsetup.cfg", "/console/"]
)
def test_nothing_else_is_served(api: Api, path: str) -> None:
    response = api.get(path, token="")
    assert response.status_code == 404
    # Outside the legacy routes: the v1 error shape.
    assert set(response.json()["error"]) >= {"code", "message"}


def test_every_file_is_listed_and_every_reference_resolves() -> None:
    on_disk = {p.name for p in CONSOLE_DIR.iterdir()} - {console_files.PAGE}
    assert set(console_files.FILES) == on_disk
    page = (CONSOLE_DIR / console_files.PAGE).read_text()
    referenced = set(re.findall(r'(?:src|href)="/console/([^"]+)"', page))
    assert referenced == {"app.js", "app.css", "icon.svg"}
    for script in SCRIPTS:
        for module in re.findall(r'from "\./([^"]+)"', script.read_text()):
            assert module in console_files.FILES, (script.name, module)


def test_the_page_holds_no_inline_code_and_loads_nothing_from_elsewhere() -> None:
    page = (CONSOLE_DIR / console_files.PAGE).read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
    assert re.findall(r"\son\w+\s*=", page) == []  # no inline event handlers
    assert "style=" not in page and "<style" not in page
    for path in CONSOLE_DIR.iterdir():
        text = path.read_text()
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert urls == set(), (path.name, urls)  # works offline: no CDN, no font service


def test_the_scripts_never_parse_text_as_html() -> None:
    """Output and names go into the page as text nodes (dom.js, ansi.js), never as markup."""
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|Function\("
    )
    for script in SCRIPTS:
        assert sinks.findall(script.read_text()) == [], script.name


def test_setup_cfg_ships_the_console_files_in_the_package() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["runvisor.http"].split()
    for path in CONSOLE_DIR.iterdir():
        relative = f"console/{path.name}"
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


@pytest.mark.parametrize(
    ("token", "role"), [(VIEWER, "viewer"), (OPERATOR, "operator"), (ADMIN, "admin")]
)
def test_whoami_names_the_tokens_principal_and_role(api: Api, token: str, role: str) -> None:
    response = api.get("/api/v1/whoami", token=token)
    assert response.status_code == 200
    body = response.json()
    assert body["role"] == role
    assert re.fullmatch(rf"{role}:[0-9a-f]{{8}}", body["principal"])
    assert token not in response.text


def test_whoami_needs_a_valid_token(api: Api) -> None:
    assert api.get("/api/v1/whoami", token="").status_code == 401
    assert api.get("/api/v1/whoami", token="not-a-token").status_code == 401
