"""The admin console in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against a real `secureig serve` in front of two Ollama stand-ins.

Every page is watched: a request to any other origin, a Content-Security-Policy violation or a
script error fails the test. Screenshots of each page go to build/console-screenshots/.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Deployment, fleet_deployment, service_missing, wait_until
from tests.standin import OllamaStandIn

SHOTS = ROOT / "build" / "console-screenshots"
KEYS: dict[str, str] = {}  # made before the module's gateway starts

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras install it
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        service_missing("the playwright package is not installed (pip install -e '.[test]')")
    path = os.environ.get("SECUREIG_CHROMIUM") or shutil.which("chromium")
    if path is None:
        service_missing("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def second() -> Iterator[OllamaStandIn]:
    server = OllamaStandIn()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(
    standin: OllamaStandIn, second: OllamaStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    backends: list[dict[str, Any]] = [
        {"name": "gpu1", "url": standin.url},
        {"name": "gpu2", "url": second.url},
    ]
    dep = fleet_deployment(tmp_path_factory.mktemp("console"), backends)
    KEYS["boss"] = dep.cli.create_key("boss", "--scope", "admin")
    KEYS["interim"] = dep.cli.create_key("interim", "--scope", "admin")
    KEYS["user"] = dep.cli.create_key("plain-user")
    dep.gateway(health_interval="0.5", usage_flush_interval="0.2")
    yield dep
    dep.close()


# Every CSP violation the browser reports, on every page the context opens, is handed to Python.
_REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation",
  (e) => window.reportViolation(`${e.violatedDirective} ${e.blockedURI}`));
"""


def _watched(browser: Browser, violations: list[str]) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.expose_function("reportViolation", lambda seen: violations.append(seen))
    context.add_init_script(_REPORT_VIOLATIONS)
    return context


@pytest.fixture
def page(browser: Browser, site: Deployment) -> Iterator[Page]:
    origin = site.gateways[0].url
    violations: list[str] = []
    context = _watched(browser, violations)
    opened = context.new_page()
    elsewhere: list[str] = []
    problems: list[str] = []
    opened.on("request", lambda r: None if r.url.startswith(origin) else elsewhere.append(r.url))
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: problems.append(str(e)))
    yield opened
    context.close()
    assert violations == [], "the browser reported CSP violations"
    assert elsewhere == [], "the console asked another origin"
    # A failed API call (401 after logout, 403) is logged by Chromium as a failed resource;
    # what must never appear is a policy violation or a script error.
    assert [p for p in problems if "Failed to load resource" not in p] == []


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _login(page: Page, site: Deployment, key: str) -> None:
    page.goto(site.gateways[0].url + "/ui")
    page.get_by_test_id("login-key").fill(key)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("logout")).to_be_visible()


def test_a_non_admin_key_is_refused_and_an_admin_logs_in_and_out(
    page: Page, site: Deployment
) -> None:
    page.goto(site.gateways[0].url + "/ui")
    _shot(page, "login")
    page.get_by_test_id("login-key").fill(KEYS["user"])
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("lacks the 'admin' scope")
    assert page.context.cookies() == []

    _login(page, site, KEYS["boss"])
    assert wait_until(lambda: page.context.cookies() != [], timeout=2)  # the jar is written async
    cookie = page.context.cookies()[0]
    assert cookie["name"] == "secureig_session" and cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict" and KEYS["boss"] not in cookie["value"]
    # The key is nowhere in the page, its storage or the cookie jar.
    assert KEYS["boss"] not in page.content()
    assert page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    expect(page.get_by_test_id("key-row")).to_have_count(3)
    _shot(page, "keys")

    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-submit")).to_be_visible()
    page.reload()
    expect(page.get_by_test_id("login-submit")).to_be_visible()
    expect(page.get_by_test_id("logout")).to_be_hidden()


def test_a_key_made_in_the_page_works_shows_its_usage_and_is_revoked_in_the_page(
    page: Page, site: Deployment
) -> None:
    url = site.gateways[0].url
    _login(page, site, KEYS["boss"])
    page.get_by_test_id("create-key-name").fill("from-the-page")
    page.get_by_test_id("create-key-models").fill("llama2, mistral:7b")
    page.locator("#limit-rpm").fill("120")
    page.get_by_test_id("create-key-submit").click()
    secret_box = page.get_by_test_id("new-key-secret")
    expect(secret_box).to_contain_text("sig_")
    secret = secret_box.inner_text().strip()
    _shot(page, "new-key")
    row = page.get_by_test_id("key-row").filter(has_text="from-the-page")
    expect(row).to_contain_text("rpm 120")
    expect(row).to_contain_text("llama2:latest, mistral:7b")

    headers = {"X-API-KEY": secret}
    ask = {"model": "llama2", "prompt": "from the console", "stream": False}
    answers: list[httpx.Response] = []

    def works() -> bool:
        answers.append(httpx.post(url + "/api/generate", headers=headers, json=ask))
        return answers[-1].status_code == 200

    # Live on every replica within the key refresh (2 s); refused until then.
    assert wait_until(works, timeout=3), answers[-1].text
    assert answers[-1].json()["response"] == "Echo: from the console"

    # A reload never shows the secret again.
    page.reload()
    expect(page.get_by_test_id("key-row").filter(has_text="from-the-page")).to_be_visible()
    assert secret not in page.content()
    expect(page.get_by_test_id("new-key-secret")).to_be_hidden()

    # Usage records are written in batches: the page shows them when next asked.
    usage_row = page.locator("#usage-rows tr").filter(has_text="from-the-page")
    for _ in range(25):
        page.get_by_test_id("nav-usage").click()
        if usage_row.count():
            break
        page.wait_for_timeout(200)
    expect(usage_row).to_be_visible()
    expect(usage_row).to_contain_text("1")
    assert int(page.get_by_test_id("usage-total-requests").inner_text()) >= 1
    expect(page.get_by_test_id("usage-busiest")).to_contain_text("from-the-page")
    expect(page.get_by_test_id("usage-slowest")).to_contain_text("from-the-page")
    # A week per day: eight bars (today and the seven before), one of them tall.
    bars = page.get_by_test_id("usage-chart").locator("rect")
    expect(bars).to_have_count(8)
    _shot(page, "usage")
    page.locator("#usage-since").select_option("24h")  # per hour, then
    expect(page.get_by_test_id("usage-per")).to_have_value("hour")
    expect(bars).to_have_count(25)
    heights = [float(bars.nth(i).get_attribute("height") or 0) for i in range(25)]
    assert heights[-1] > 0 and heights.count(0) >= 20, heights  # requests in this hour only
    _shot(page, "usage-hourly")

    page.get_by_test_id("nav-keys").click()
    row = page.get_by_test_id("key-row").filter(has_text="from-the-page")
    row.get_by_test_id("revoke-key").click()
    page.get_by_test_id("confirm").click()
    expect(row).to_have_count(0)  # the list shows live keys
    page.get_by_test_id("show-revoked").check()
    expect(row).to_contain_text("revoked")
    expect(row.get_by_test_id("revoke-key")).to_have_count(0)
    generate = {"model": "llama2", "prompt": "again", "stream": False}
    assert wait_until(
        lambda: (
            httpx.post(url + "/api/generate", headers=headers, json=generate).status_code == 401
        ),
        timeout=2.0,
    )


def test_a_key_is_edited_in_the_page_and_the_gateway_enforces_the_change(
    page: Page, site: Deployment
) -> None:
    url = site.gateways[0].url
    _login(page, site, KEYS["boss"])
    page.get_by_test_id("create-key-name").fill("to-edit")
    page.get_by_test_id("create-key-models").fill("llama2")
    page.locator("#limit-rpm").fill("100")
    page.locator("#limit-max_num_ctx").fill("4096")
    page.get_by_test_id("create-key-submit").click()
    expect(page.get_by_test_id("new-key-secret")).to_contain_text("sig_")
    headers = {"X-API-KEY": page.get_by_test_id("new-key-secret").inner_text().strip()}

    def status(model: str) -> int:
        ask = {"model": model, "prompt": "hi", "stream": False}
        return httpx.post(url + "/api/generate", headers=headers, json=ask).status_code

    assert wait_until(lambda: status("llama2") == 200, timeout=3)
    assert status("mistral:7b") == 403

    row = page.get_by_test_id("key-row").filter(has_text="to-edit")
    row.get_by_test_id("edit-key").click()
    expect(page.get_by_test_id("edit-limit-rpm")).to_have_value("100")  # what it has now
    page.get_by_test_id("edit-key-models").fill("mistral:7b")
    page.get_by_test_id("edit-limit-rpm").fill("30")
    page.get_by_test_id("edit-limit-max_num_ctx").fill("")  # emptied: removed
    page.get_by_test_id("edit-limit-concurrency").fill("2")
    _shot(page, "edit-key")
    page.get_by_test_id("edit-key-submit").click()
    expect(row).to_contain_text("rpm 30, concurrency 2")
    expect(row).not_to_contain_text("max_num_ctx")
    expect(row).to_contain_text("mistral:7b")

    # The change is the store's (the admin API says the same) and every replica enforces it.
    admin = {"X-API-KEY": KEYS["boss"]}
    stored = next(k for k in httpx.get(url + "/admin/keys", headers=admin).json()
                  if k["name"] == "to-edit")  # fmt: skip
    assert stored["models"] == ["mistral:7b"]
    assert stored["limits"]["rpm"] == 30 and stored["limits"]["concurrency"] == 2
    assert stored["limits"]["max_num_ctx"] is None
    assert wait_until(lambda: status("llama2") == 403, timeout=2.5)
    assert status("mistral:7b") == 200

    # Limited to a network these requests do not come from: refused as a wrong key is.
    row.get_by_test_id("edit-key").click()
    page.get_by_test_id("edit-key-allow-from").fill("10.0.0.0/8, fd00::/8")
    page.get_by_test_id("edit-key-submit").click()
    expect(row).to_contain_text("10.0.0.0/8, fd00::/8")
    assert wait_until(lambda: status("mistral:7b") == 401, timeout=2.5)
    row.get_by_test_id("edit-key").click()
    expect(page.get_by_test_id("edit-key-allow-from")).to_have_value("10.0.0.0/8, fd00::/8")
    page.get_by_test_id("edit-key-allow-from").fill("")
    page.get_by_test_id("edit-key-submit").click()
    expect(row).to_contain_text("anywhere")
    assert wait_until(lambda: status("mistral:7b") == 200, timeout=2.5)

    # A bad value is refused with the API's reason, in the dialog, and changes nothing.
    row.get_by_test_id("edit-key").click()
    page.get_by_test_id("edit-limit-rpm").fill("99999999999")
    page.get_by_test_id("edit-key-submit").click()
    expect(page.locator("#edit-error")).to_contain_text("rpm")
    page.locator("#edit-cancel").click()
    stored = next(k for k in httpx.get(url + "/admin/keys", headers=admin).json()
                  if k["name"] == "to-edit")  # fmt: skip
    assert stored["limits"]["rpm"] == 30


def test_the_live_page_updates_by_itself(
    page: Page, site: Deployment, standin: OllamaStandIn, second: OllamaStandIn
) -> None:
    url = site.gateways[0].url
    _login(page, site, KEYS["boss"])
    page.get_by_test_id("nav-live").click()
    page.evaluate("window.notReloaded = true")
    # A rate needs two readings.
    expect(page.get_by_test_id("live-rps")).not_to_have_text(
        "\u2013", timeout=6000
    )  # no reading yet
    expect(page.get_by_test_id("live-streams")).to_have_text("0")

    for server in (standin, second):  # whichever backend takes it
        server.chunk_delay = 0.3
        server.reply = lambda prompt: [f" w{i}" for i in range(20)]  # about 6 s
    done: list[int] = []

    def stream() -> None:
        body = {"model": "llama2", "prompt": "a long one"}
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=30,
                          headers={"X-API-KEY": KEYS["user"]}) as answer:  # fmt: skip
            answer.read()
            done.append(answer.status_code)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        expect(page.get_by_test_id("live-streams")).to_have_text("1", timeout=6000)
        wrong = httpx.post(url + "/api/generate", headers={"X-API-KEY": "sig_" + "x" * 43},
                           json={"model": "llama2", "prompt": "x"})  # fmt: skip
        assert wrong.status_code == 401
        refusal = page.get_by_test_id("live-refusal").filter(has_text="no valid key")
        expect(refusal).to_be_visible(timeout=6000)
        for _ in range(10):
            listed = httpx.get(url + "/api/tags", headers={"X-API-KEY": KEYS["user"]})
            assert listed.status_code == 200
        expect(page.get_by_test_id("live-rps")).not_to_have_text("0.0", timeout=6000)
        expect(page.locator("#live-chart polyline")).to_have_count(1)
        _shot(page, "live")
    finally:
        thread.join(timeout=30)
    assert done == [200]
    expect(page.get_by_test_id("live-streams")).to_have_text("0", timeout=6000)
    assert page.evaluate("window.notReloaded") is True
    # Leaving the page stops the polling.
    page.get_by_test_id("nav-keys").click()
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/admin/live" in r.url else None)
    page.wait_for_timeout(4500)
    assert polls == []


def test_the_backends_page_shows_a_backend_going_down(
    page: Page, site: Deployment, second: OllamaStandIn
) -> None:
    _login(page, site, KEYS["boss"])
    page.get_by_test_id("nav-backends").click()
    rows = page.get_by_test_id("backend-row")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="gpu2")).to_contain_text("up")
    _shot(page, "backends")
    second.stop()
    # The page asks again when shown again; the health check marks it down within a second.
    for _ in range(30):
        page.get_by_test_id("nav-backends").click()
        if "down" in rows.filter(has_text="gpu2").inner_text():
            break
        page.wait_for_timeout(200)
    expect(rows.filter(has_text="gpu2")).to_contain_text("down")
    expect(rows.filter(has_text="gpu1")).to_contain_text("up")
    _shot(page, "backends-down")


def test_the_session_ends_when_its_admin_key_is_revoked(page: Page, site: Deployment) -> None:
    _login(page, site, KEYS["interim"])
    site.cli("keys", "revoke", "interim")
    # The next thing the page asks, once the revocation reached the gateway, is refused, and
    # the page says so.
    for _ in range(30):
        if page.get_by_test_id("login-error").is_visible():
            break
        page.get_by_test_id("nav-keys").click()
        page.wait_for_timeout(200)
    expect(page.get_by_test_id("login-error")).to_contain_text("session has ended")
    expect(page.get_by_test_id("logout")).to_be_hidden()


def test_the_csp_refuses_inline_script_and_the_browser_says_so(
    browser: Browser, site: Deployment
) -> None:
    """The check every other test makes (no violation reported) can fail: script injected into
    the page is refused, and reported."""
    violations: list[str] = []
    context = _watched(browser, violations)
    page = context.new_page()
    page.goto(site.gateways[0].url + "/ui")
    expect(page.get_by_test_id("login-submit")).to_be_visible()  # the page's own script ran
    page.evaluate("""() => {
        const injected = document.createElement("script");
        injected.textContent = "window.injectedRan = true";
        document.body.append(injected);
        const image = document.createElement("img");
        image.src = "http://localhost:9/tracker.png";
        document.body.append(image);
    }""")
    for _ in range(30):  # Playwright hands reports over only while it is called
        if len(violations) >= 2:
            break
        page.wait_for_timeout(100)
    assert page.evaluate("window.injectedRan === undefined")
    context.close()
    assert any(v.startswith("script-src") for v in violations), violations
    assert any(v.startswith("img-src") and "localhost:9" in v for v in violations), violations


class _Hostile(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>nothing to see</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    """Another site on loopback: `localhost` is not `127.0.0.1` to SameSite or to CORS."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_site_cannot_change_anything(
    browser: Browser, site: Deployment, hostile: str
) -> None:
    """A logged-in browser visiting a hostile page: its cross-site POST carries no cookie
    (SameSite=Strict) and no CSRF token, so no key is made."""
    url = site.gateways[0].url
    context = browser.new_context()
    page = context.new_page()
    _login(page, site, KEYS["boss"])
    page.goto(hostile)
    kind = page.evaluate(
        """async (target) => {
            const r = await fetch(target + "/admin/keys", {method: "POST", credentials: "include",
              mode: "no-cors", headers: {"Content-Type": "text/plain"},
              body: JSON.stringify({name: "forged", scopes: ["admin"]})});
            return r.type;
        }""",
        url,
    )
    context.close()
    assert kind == "opaque"  # sent, and its answer unreadable to the page
    admin = {"X-API-KEY": KEYS["boss"]}
    names = [k["name"] for k in httpx.get(url + "/admin/keys", headers=admin).json()]
    assert "forged" not in names

    def refused() -> bool:
        # The access log writes its lines in batches, up to 50 ms after the answer.
        return any(
            "POST /admin/keys" in line and "status=401" in line
            for line in site.gateways[0].log().splitlines()
        )

    assert wait_until(refused), "the forged request never reached the gateway"


def test_screenshots_were_written() -> None:
    """Run last in the module: every page's screenshot exists and is a real image."""
    for name in (
        "login",
        "keys",
        "new-key",
        "edit-key",
        "usage",
        "usage-hourly",
        "live",
        "backends",
        "backends-down",
    ):
        shot = Path(SHOTS / f"{name}.png")
        assert shot.exists() and shot.stat().st_size > 5000, name
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
