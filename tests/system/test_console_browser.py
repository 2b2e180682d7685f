"""The web console in a real browser: Debian's headless Chromium, driven through its own
chromedriver, against a real `secure-maas serve` under gunicorn.

A console user signs in by pasting a token, filters the audit table, sees the charts and the
budget gauge drawn (non-empty SVG with the expected series and data), runs an explain, and signs
out. Every page the browser loads is checked for Content-Security-Policy violations, both as the
page reports them (`securitypolicyviolation`, listened for from before the page's own content
runs) and as Chromium logs them; any violation, and any failed load of the console's own
resources, fails the test. A screenshot of each main page goes to `var/screenshots/` for review.

Nothing is downloaded at run time: the browser and driver are Debian's packages (`make
browser-deps`), and Selenium is given the driver's path, so Selenium Manager never runs. Every
wait is an explicit wait for an element or a page with a generous limit; nothing sleeps.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from secure_maas.audit import KeyringAuditKeys
from secure_maas.audit.query import get_event, read_snapshot
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import Rule, directory, grants
from tests.functional.serving_support import (
    ROOT,
    Instance,
    events,
    free_port,
    prepare,
    server,
)
from tests.functional.training_support import plan
from tests.system.support import GUNICORN, Kind, predict, send

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "var" / "screenshots"
#: How long any one wait may take: far beyond a page's render on a busy 2-core machine; a
#: wait that runs out is a failure, never a retry.
WAIT = 60.0
#: The console user: reads the audit log and privacy reports, lists models; no admin:write.
READER = "ada"
READER_ACTIONS = ["audit:read", "privacy:read", "model:list", "model:metadata"]
DATASET = "wine"
BUDGET = 10.0

#: Registered before the page's own content runs (CDP, so the page's CSP does not apply to
#: it): every violation the page raises is written to the console, which Chromium's log keeps
#: across navigations.
LISTENER = """
window.smaasCspListener = true;
document.addEventListener('securitypolicyviolation', function (e) {
  console.error('securitypolicyviolation ' + JSON.stringify({
    directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile,
    line: e.lineNumber, sample: e.sample}));
});
"""


def need_browser() -> None:
    """Fail (under `make test`, which installs the browser first) or skip without Chromium."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = f"{', '.join(missing)} missing: run `make browser-deps`"
        if os.environ.get("SMAAS_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


# -- the instance the console serves --------------------------------------------------------


def _reader_and_privacy(instance: Instance) -> None:
    """A console reader with a token, and a dataset whose budget has a finished run, a run
    started and never finished, and a run refused for the budget."""
    from secure_maas.auth import tokens
    from secure_maas.training import dataset_catalog, ledger
    from secure_maas.training.ledger import BudgetExceeded

    keyring = Keyring.open(instance.settings.keys_dir)
    keys = KeyringAuditKeys(keyring)
    factory = session_factory(instance.engine)
    with session_scope(factory) as session:
        directory.add_principal(session, READER, actor="tests", roles=[])
        grants.grant(session, Rule("allow", f"user:{READER}", READER_ACTIONS), actor="tests")
        issued = tokens.issue(
            session,
            keyring,
            instance.settings,
            subject=READER,
            ttl=timedelta(hours=1),
            actor="tests",
        )
        instance.tokens[READER] = issued.token
    dataset_catalog.register_dataset(
        instance.engine,
        keys,
        name=DATASET,
        source="sklearn:wine",
        epsilon_budget=BUDGET,
        actor="tests",
    )
    finished = plan(3.0, model="digits")
    run = ledger.reserve(instance.engine, keys, DATASET, finished, actor="tests").run_id
    with session_scope(factory) as session:
        ledger.finish(
            session,
            keys,
            run,
            privacy=finished.privacy,
            model_version=1,
            path_used="fast-clipping",
            test_accuracy=0.9,
            actor="tests",
        )
    ledger.reserve(instance.engine, keys, DATASET, plan(4.0, model="digits"), actor="tests")
    with pytest.raises(BudgetExceeded):
        ledger.reserve(instance.engine, keys, DATASET, plan(0.3, model="digits"), actor="tests")


def _traffic(instance: Instance, url: str) -> None:
    """Requests allowed, denied and refused, for the audit page's table and charts."""
    answers = []
    for _ in range(6):
        answers.append(send(url, predict(instance, "alice")))
    canary = Kind(
        "alice:canary",
        "POST",
        "/v1/models/digits/labels/canary:predict",
        frozenset({403}),
        json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode(),
        (
            ("Authorization", f"Bearer {instance.tokens['alice']}"),
            ("Content-Type", "application/json"),
        ),
    )
    for kind in (canary, canary, predict(instance, "eve"), predict(instance, "eve")):
        answers.append(send(url, kind))
    for who in ("garbage", "expired"):
        answers.append(send(url, predict(instance, who)))
    statuses = [a.status for a in answers]
    assert statuses[:6] == [200] * 6, statuses
    assert all(s in (401, 403, 404) for s in statuses[6:]), statuses


def get_event_record(engine: Any, seq: int) -> Any:
    with read_snapshot(engine) as connection:
        record = get_event(connection, seq)
    assert record is not None
    return record


@dataclass
class Console:
    instance: Instance
    url: str

    def denied_actors(self) -> set[str]:
        return {r.actor for r in events(self.instance.engine, decision="deny")}


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    need_browser()
    tmp = tmp_path_factory.mktemp("console")
    instance = prepare(tmp, f"sqlite:///{tmp / 'var' / 'secure_maas.db'}")
    try:
        _reader_and_privacy(instance)
        with server(instance, *GUNICORN) as served:
            _traffic(instance, served.url)
            yield Console(instance, served.url)
    finally:
        instance.engine.dispose()


# -- the browser ----------------------------------------------------------------------------


@dataclass
class Browser:
    """One headless Chromium session, its log checked for CSP violations as it goes."""

    driver: Any
    base: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def wait(self, condition: Callable[[Any], Any], what: str) -> Any:
        try:
            return WebDriverWait(self.driver, WAIT).until(condition)
        except TimeoutException:
            raise AssertionError(
                f"{what} not seen within {WAIT:.0f} s at {self.driver.current_url}:\n"
                f"{self.driver.page_source[:3000]}"
            ) from None

    def find(self, css: str) -> WebElement:
        element: WebElement = self.wait(ec.presence_of_element_located((By.CSS_SELECTOR, css)), css)
        return element

    def all(self, css: str) -> list[WebElement]:
        found: list[WebElement] = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found

    def submit(self, css: str, then: str) -> None:
        """Click `css` and wait until the next page has replaced this one and shows `then`."""
        page = self.driver.find_element(By.TAG_NAME, "html")
        self.find(css).click()
        self.wait(replaced(page), f"the page after clicking {css}")
        self.find(then)

    def path(self) -> str:
        return urlsplit(self.driver.current_url).path

    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.driver.current_url).query)

    def check_log(self) -> None:
        """No CSP violation, and no failed load of the console's own resources, so far."""
        listening = self.driver.execute_script("return window.smaasCspListener === true")
        assert listening, f"the CSP listener is not installed on {self.driver.current_url}"
        entries = self.driver.get_log("browser")
        self.seen += entries
        violations = [
            e["message"]
            for e in entries
            if "securitypolicyviolation" in e["message"]
            or "Content Security Policy" in e["message"]
        ]
        if violations:
            raise AssertionError("CSP violations:\n" + "\n".join(violations))
        # Pages answered 401 or 403 on purpose are logged as failed loads too: only the
        # console's static resources must always load.
        failed = [
            e["message"]
            for e in entries
            if "Failed to load resource" in e["message"] and "/console/static/" in e["message"]
        ]
        if failed:
            raise AssertionError("console resources not loaded:\n" + "\n".join(failed))

    def screenshot(self, name: str, *, whole: bool = True) -> Path:
        """The whole page (beyond the window), or what the window shows, as a PNG under
        var/screenshots/."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOTS / f"console-{name}.png"
        if not whole:
            assert self.driver.save_screenshot(str(target)), target
            return target
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics["cssContentSize"]
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": min(size["height"], 8000),
                    "scale": 1,
                },
            },
        )
        target.write_bytes(base64.b64decode(shot["data"]))
        return target


@contextmanager
def chromium(base: str, profile: Path) -> Iterator[Browser]:
    """A headless Chromium on a fresh profile, the CSP listener installed, its log checked
    once more when the block ends without an error."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile) + ".driver.log")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": LISTENER})
        browser = Browser(driver, base)
        yield browser
        browser.check_log()
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(console: Console, tmp_path: Path) -> Iterator[Browser]:
    """A fresh browser profile per test (no cookie carried between tests)."""
    with chromium(console.url, tmp_path / "profile") as opened:
        yield opened


def replaced(element: WebElement) -> Callable[[Any], bool]:
    """A wait condition: `element`'s document is gone. Selenium's `staleness_of` waits for a
    StaleElementReferenceException only; while the next page loads, Chromium may instead
    answer "Node with given id does not belong to the document" (a WebDriverException, which
    a wait does not ignore, so the test failed on a page that had been replaced as asked)."""

    def gone(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in (error.msg or ""):
                return True
            raise
        return False

    return gone


def sign_in(browser: Browser, token: str) -> None:
    browser.open("/console/signin")
    field = browser.find("form#signin textarea[name=token]")
    field.send_keys(token)
    browser.submit("#signin-submit", "body")
    assert browser.path() == "/console/audit", (
        f"sign-in ended at {browser.driver.current_url}: "
        + browser.driver.find_element(By.TAG_NAME, "main").text[:500]
    )
    browser.find("#whoami")
    browser.check_log()


def reloaded_state(driver: Any) -> str | None:
    """The integrity banner's state after loading the audit page again (the page says to
    reload to follow a verification; it has no script to do so)."""
    driver.refresh()
    found = driver.find_elements(By.CSS_SELECTOR, "#integrity")
    return found[0].get_attribute("data-state") if found else None


def signed_in(browser: Browser) -> bool:
    """Whether the page shows someone signed in (a subject in #whoami, a sign-out form)."""
    return bool(browser.find("#whoami").text.strip()) or bool(browser.all("form#signout"))


def svg(browser: Browser, chart_id: str) -> WebElement:
    """The chart `chart_id`, once drawn: an <svg> with a non-zero rendered size."""
    chart = browser.find(f"svg#{chart_id}")
    size = chart.size
    assert size["width"] > 0 and size["height"] > 0, (chart_id, size)
    return chart


# -- the harness ---------------------------------------------------------------------------


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A page under the contract's CSP (`default-src 'self'`) that breaks it twice."""

    def do_GET(self) -> None:
        body = b"<!doctype html><p style='color:red'>x</p><script>document.title='ran'</script>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Security-Policy", "default-src 'self'")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_harness_fails_on_a_csp_violation(tmp_path: Path) -> None:
    """The check the console's pages pass is one that fails: a page that breaks the same
    policy is caught, by the page's own event and by Chromium's log."""
    need_browser()
    site = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Hostile)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        with chromium(f"http://127.0.0.1:{site.server_port}", tmp_path / "profile") as opened:
            opened.open("/")
            opened.find("p")
            assert opened.driver.title != "ran"  # the inline script was blocked
            with pytest.raises(AssertionError) as caught:
                opened.check_log()
            text = str(caught.value)
            assert "securitypolicyviolation" in text and "style-src" in text
            assert "script-src" in text and "Content Security Policy" in text
    finally:
        site.shutdown()
        site.server_close()
        thread.join(timeout=10)


# -- sign-in --------------------------------------------------------------------------------


def test_sign_in_with_a_pasted_token_and_out_again(console: Console, browser: Browser) -> None:
    browser.open("/console/")
    browser.find("form#signin")
    assert browser.path() == "/console/signin"
    browser.screenshot("signin")
    browser.check_log()

    sign_in(browser, console.instance.tokens[READER])
    assert browser.path() == "/console/audit"
    assert browser.find("#whoami").text.strip().endswith(READER)
    assert browser.find("nav#console-nav").is_displayed()
    stylesheets = [link.get_attribute("href") for link in browser.all("link[rel=stylesheet]")]
    assert [urlsplit(href or "").path for href in stylesheets] == ["/console/static/console.css"]
    # The session lives in an HttpOnly cookie scripts cannot read.
    cookies = browser.driver.get_cookies()
    assert cookies and all(c["httpOnly"] and c.get("sameSite") == "Strict" for c in cookies)
    assert browser.driver.execute_script("return document.cookie") == ""

    browser.submit("form#signout [type=submit]", "form#signin")
    assert browser.path() == "/console/signin"
    assert not signed_in(browser)
    # Signed out means out: the audit page sends the browser back to sign in.
    browser.open("/console/audit")
    browser.find("form#signin")
    assert browser.all("#audit-table") == []


def test_revoking_the_token_ends_the_session(console: Console, browser: Browser) -> None:
    from secure_maas.auth import tokens

    keyring = Keyring.open(console.instance.settings.keys_dir)
    factory = session_factory(console.instance.engine)
    with session_scope(factory) as session:
        issued = tokens.issue(
            session,
            keyring,
            console.instance.settings,
            subject=READER,
            ttl=timedelta(hours=1),
            actor="tests",
        )
    sign_in(browser, issued.token)
    with session_scope(factory) as session:
        tokens.revoke(session, issued.jti, actor="tests")
    # The next page after the revocation (propagation takes up to a second: reload until then)
    # is the sign-in form, never the audit log.
    browser.wait(
        lambda driver: driver.refresh() or urlsplit(driver.current_url).path == "/console/signin",
        "the sign-in page after the token was revoked",
    )
    browser.find("form#signin")
    assert not signed_in(browser)
    assert browser.all("#audit-table") == []


def test_a_bad_token_does_not_sign_in(console: Console, browser: Browser) -> None:
    for name in ("garbage", "revoked", "expired"):
        browser.open("/console/signin")
        browser.find("form#signin textarea[name=token]").send_keys(console.instance.tokens[name])
        browser.submit("#signin-submit", "form#signin")
        assert not signed_in(browser), name
    assert browser.driver.get_cookies() == []
    browser.open("/console/audit")
    browser.find("form#signin")


# -- audit ----------------------------------------------------------------------------------


def test_audit_table_filters_and_charts(console: Console, browser: Browser) -> None:
    sign_in(browser, console.instance.tokens[READER])
    browser.open("/console/audit")
    table = browser.find("table#audit-table")
    rows = table.find_elements(By.CSS_SELECTOR, "tr.event")
    assert rows, "the audit table is empty"
    integrity = browser.find("#integrity")
    assert integrity.get_attribute("data-state") in {"ok", "broken", "unknown", "running"}

    # Requests by decision: both decisions of the traffic drawn, bars with counts.
    requests = svg(browser, "chart-requests")
    series = {
        g.get_attribute("data-series"): g.find_elements(By.CSS_SELECTOR, "rect.bar")
        for g in requests.find_elements(By.CSS_SELECTOR, "g.series")
    }
    assert series.get("allow") and series.get("deny"), series.keys()
    assert all(int(r.get_attribute("data-value") or 0) > 0 for r in series["deny"])
    # Denials by subject: the denied actors of the log, and nobody else.
    denied = {
        g.get_attribute("data-label")
        for g in svg(browser, "chart-denials-actor").find_elements(By.CSS_SELECTOR, "g.item")
    }
    assert denied and denied <= console.denied_actors(), (denied, console.denied_actors())
    assert "eve" in denied or "user:eve" in denied, denied
    models = svg(browser, "chart-denials-model").find_elements(By.CSS_SELECTOR, "g.item")
    assert "digits" in {g.get_attribute("data-label") for g in models}
    reasons = svg(browser, "chart-reasons").find_elements(By.CSS_SELECTOR, "g.item")
    assert reasons and all(float(g.get_attribute("data-value") or 0) > 0 for g in reasons)
    latency = svg(browser, "chart-latency")
    lines = latency.find_elements(By.CSS_SELECTOR, "g.series")
    assert any("digits" in (g.get_attribute("data-series") or "") for g in lines), [
        g.get_attribute("data-series") for g in lines
    ]
    assert all(g.find_elements(By.CSS_SELECTOR, "polyline") for g in lines)
    browser.screenshot("audit")
    browser.screenshot("audit-window", whole=False)  # the README's picture (docs/img/)
    browser.check_log()

    # Verify on demand: the banner ends at "ok", with the number of events checked.
    browser.submit("#verify-submit", "#integrity")
    browser.wait(
        lambda driver: reloaded_state(driver) == "ok",
        "the integrity banner at ok after 'Verify now'",
    )
    assert "intact" in browser.find("#integrity").text.lower()
    browser.check_log()

    # Filter through the form: denied events only.
    form = browser.find("form#audit-filter")
    decision = form.find_element(By.NAME, "decision")
    if decision.tag_name == "select":
        from selenium.webdriver.support.ui import Select

        Select(decision).select_by_value("deny")
    else:
        decision.clear()
        decision.send_keys("deny")
    browser.submit("#audit-filter-submit", "table#audit-table")
    assert browser.query().get("decision") == ["deny"]
    filtered = browser.all("table#audit-table tr.event")
    seqs = {int(r.get_attribute("data-seq") or 0) for r in filtered}
    denied_seqs = {r.seq for r in events(console.instance.engine, decision="deny")}
    assert filtered and seqs <= denied_seqs, (seqs, denied_seqs)
    # The charts follow the table's filter: no allowed requests drawn any more.
    series_now = {
        g.get_attribute("data-series"): g.find_elements(By.CSS_SELECTOR, "rect.bar")
        for g in svg(browser, "chart-requests").find_elements(By.CSS_SELECTOR, "g.series")
    }
    assert not series_now.get("allow") and series_now.get("deny"), series_now.keys()
    browser.screenshot("audit-denied")

    # One event's detail, with its MAC and key id.
    first = min(seqs)
    browser.open(f"/console/audit/{first}")
    detail = browser.find("dl#event")
    record = get_event_record(console.instance.engine, first)
    assert str(first) in detail.text and record.key_id in detail.text
    assert record.mac.hex() in detail.text or base64.b64encode(record.mac).decode() in detail.text
    browser.screenshot("audit-event")
    browser.check_log()


def test_an_actor_filter_narrows_the_table(console: Console, browser: Browser) -> None:
    sign_in(browser, console.instance.tokens[READER])
    browser.open("/console/audit")
    form = browser.find("form#audit-filter")
    actor = form.find_element(By.NAME, "actor")
    actor.clear()
    actor.send_keys("alice")
    browser.submit("#audit-filter-submit", "table#audit-table")
    assert browser.query().get("actor") == ["alice"]
    seqs = {int(r.get_attribute("data-seq") or 0) for r in browser.all("tr.event")}
    alices = {r.seq for r in events(console.instance.engine, actor="alice")}
    assert seqs and seqs <= alices
    assert browser.find("form#audit-filter [name=actor]").get_attribute("value") == "alice"


# -- privacy --------------------------------------------------------------------------------


def test_privacy_budget_gauge_and_runs(console: Console, browser: Browser) -> None:
    sign_in(browser, console.instance.tokens[READER])
    browser.open("/console/privacy")
    section = browser.find(f"section.dataset[data-dataset={DATASET}]")
    gauge = svg(browser, f"gauge-{DATASET}")
    assert "gauge" in (gauge.get_attribute("class") or "").split()
    spent = float(gauge.get_attribute("data-spent") or "nan")
    total = float(gauge.get_attribute("data-total") or "nan")
    assert total == BUDGET and 0 < spent < total, (spent, total)
    assert "over" not in (gauge.get_attribute("class") or "").split()
    assert gauge.find_elements(By.CSS_SELECTOR, "path.arc")
    runs = svg(browser, f"runs-{DATASET}").find_elements(By.CSS_SELECTOR, "g.run")
    statuses = sorted(r.get_attribute("data-status") or "" for r in runs)
    assert statuses == ["finished", "refused", "started"], statuses
    unfinished = [r for r in runs if r.get_attribute("data-status") == "started"]
    assert "open" in (unfinished[0].get_attribute("class") or "").split()
    finished = [r for r in runs if r.get_attribute("data-status") == "finished"]
    assert float(finished[0].get_attribute("data-value") or 0) > 0
    assert section.find_elements(By.CSS_SELECTOR, "table.models")
    browser.screenshot("privacy")
    browser.check_log()


# -- models and access ----------------------------------------------------------------------


def test_models_page(console: Console, browser: Browser) -> None:
    sign_in(browser, console.instance.tokens[READER])
    browser.open("/console/models")
    table = browser.find("table#models-table")
    assert "digits" in table.text
    browser.screenshot("models")
    browser.check_log()


def test_explain_a_decision(console: Console, browser: Browser) -> None:
    sign_in(browser, console.instance.tokens[READER])
    browser.open("/console/access")
    browser.find("form#explain")
    browser.screenshot("access")
    for subject, action, allowed in (
        ("eve", "model:predict", "false"),
        ("alice", "model:list", "true"),
    ):
        form = browser.find("form#explain")
        for name, value in (("subject", subject), ("model", "digits")):
            element = form.find_element(By.NAME, name)
            element.clear()
            element.send_keys(value)
        chooser = form.find_element(By.NAME, "action")
        if chooser.tag_name == "select":
            Select(chooser).select_by_value(action)
        else:
            chooser.clear()
            chooser.send_keys(action)
        browser.submit("#explain-submit", "#explain-result")
        result = browser.find("#explain-result")
        assert result.get_attribute("data-allowed") == allowed, (subject, action, result.text)
        browser.check_log()
    browser.screenshot("access-explained")
