"""The console in Debian's headless Chromium, driven by Selenium, against real workers on the
real broker (issue 19's browser tests): the demo's orders and a loan waiting for its review run;
each page (overview, sagas, one saga, dead letters, topology) shows what the topics hold, read
committed; the loan is approved from its page (a note filled in, a click) and completes; an order
made poison by a misconfigured topic is dead-lettered, the topic fixed, and the order redriven
from the dead-letter page (dry run, confirmation) to completion.

Each whole page is saved as a PNG under build/console-screenshots/ (the CI artifact;
`scripts/readme-screenshots` copies the README's from there). One Chromium serves the module. Two defects the HTTP tests could not see came out here: the approve form was
refused (the pages' `Referrer-Policy: no-referrer` made Chromium send `Origin: null`), and the
style sheet was not served from an editable install.
"""

from __future__ import annotations

import base64
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from sagastream.ops.admin import admin_client
from sagastream.ops.client import Client
from sagastream.ops.demo import order_fields
from sagastream.wire.dlq import read_dead_letter_headers
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import every_dead_letter, loan_applied, place_order, wait_outcomes
from tests.integration.test_console import LOAN_HANDLERS, wait_for_review
from tests.integration.test_console_actions import TOKEN
from tests.integration.test_console_actions import console as actions_console

pytestmark = [pytest.mark.integration, pytest.mark.once]

SHOTS = Path(__file__).parents[2] / "build" / "console-screenshots"
DEMO_ORDERS = [f"demo-{n:02d}" for n in range(12)]
LOAN = "loan-review-1"
POISON = "order-long-address"
# the planted misconfiguration: shipping.commands takes records of at most this many bytes, so
# the shipping command of an order with a longer address cannot be written
SMALL_LIMIT = 4000
LONG_ADDRESS = "Long Street " * 500  # 6,000 bytes
HEADER_COLOUR = "rgba(29, 35, 48, 1)"  # console.css: header { background: #1d2330 }
PAGE_WAIT_S = 30  # a page that a click leads to loads within this


def install_hint() -> str:
    return (
        "the console's browser test needs Debian's chromium and chromium-driver: run "
        "scripts/test-tools (as root), or apt-get install chromium chromium-driver"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium, signed in as alice (her basic credentials on every request, as a
    browser sends them once the user has signed in)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(install_hint())
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,800")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    credentials = base64.b64encode(f"alice:{TOKEN}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}}
    )
    try:
        yield driver
    finally:
        driver.quit()


class Console:
    """The browser on one console: open a page, read what it shows, keep a screenshot."""

    def __init__(self, driver: WebDriver, port: int) -> None:
        self.driver = driver
        self.base = f"http://127.0.0.1:{port}"

    def open(self, path: str, shot: str | None = None) -> None:
        self.driver.get(self.base + path)
        self.check_page()
        if shot is not None:
            self.shoot(shot)

    def check_page(self) -> None:
        """The page answered, and in the console's style (its sheet loaded: a dark header)."""
        title = self.driver.title
        assert "Not understood" not in title and "Kafka did not answer" not in title, self.body()
        # a refusal (401, 403, 409) is plain text, without the console's header
        headers = self.driver.find_elements(By.TAG_NAME, "header")
        assert headers, f"not a console page at {self.driver.current_url}: {self.body()[:2000]}"
        assert headers[0].value_of_css_property("background-color") == HEADER_COLOUR, title

    def shoot(self, name: str) -> None:
        """The whole page as a PNG (beyond the window where it is longer)."""
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))

    def body(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def texts(self, css: str) -> list[str]:
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css)]

    def text(self, css: str) -> str:
        """The element's text; found again if the overview's live part was swapped in between
        (console.js replaces it every few seconds)."""
        for _ in range(3):
            try:
                return self.driver.find_element(By.CSS_SELECTOR, css).text
            except StaleElementReferenceException:
                continue
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def tick(self, css: str) -> None:
        """Click what changes nothing but itself (a checkbox)."""
        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def submit(self, css: str) -> None:
        """Click a form's button and wait for the page it leads to: the old page gone (its
        elements stale), the new one loaded; a check of the old page would race the
        navigation."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.find_element(By.CSS_SELECTOR, css).click()
        wait = WebDriverWait(self.driver, PAGE_WAIT_S)
        wait.until(expected_conditions.staleness_of(old))
        wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        self.check_page()


def set_shipping_limit(ns: Any, value: int | None) -> None:
    """shipping.commands' max.message.bytes: `value`, or (None) the broker's default again;
    returns once the broker describes it so (what a starting worker reads)."""
    topic = ns.topic("shipping.commands")
    entry = ConfigEntry(
        "max.message.bytes",
        "" if value is None else str(value),
        incremental_operation=AlterConfigOpType.SET if value else AlterConfigOpType.DELETE,
    )
    admin = admin_client(ns.settings)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while True:
        described = ConfigResource(ConfigResource.Type.TOPIC, topic)
        now = admin.describe_configs([described])[described].result(30)["max.message.bytes"]
        if (int(now.value) == value) if value else now.is_default:
            return
        assert time.monotonic() < deadline, f"{topic} max.message.bytes is still {now.value}"
        time.sleep(0.2)


console = actions_console  # the same console: actions on, one user (alice)


def test_the_console_in_a_browser(
    ns: Any, start_workers: Any, console: int, browser: WebDriver
) -> None:
    set_shipping_limit(ns, SMALL_LIMIT)
    orchestrator = start_workers("orchestrator")
    start_workers(f"{HANDLERS},{LOAN_HANDLERS}")
    expected = {k: order_fields(k, random.Random(k))[1] for k in DEMO_ORDERS}
    for key in DEMO_ORDERS:
        place_order(ns, key, mixed=True)
    place_order(ns, POISON, shipping_address=LONG_ADDRESS)
    with Client(ns.settings) as client:
        client.start(loan_applied(LOAN))
        outcomes = wait_outcomes(ns, set(DEMO_ORDERS))
        assert {k: m.event_type for k, m in outcomes.items()} == expected
        wait_for_review(client, LOAN)
    [poison] = ns.client.read([ns.topic("orders.events.dlq")], lambda m: bool(m), 60)
    why = read_dead_letter_headers(poison.headers)
    assert (poison.key, why["reason"]) == (POISON.encode(), "record_too_large"), why
    assert f"over the limit of {SMALL_LIMIT}" in why["error"]

    page = Console(browser, console)
    # the console's index follows the topics a moment behind: its pages are read again
    eventually(lambda: check_overview(ns, page))
    shown = {**{k: status(v) for k, v in expected.items()}, LOAN: "running"}
    eventually(lambda: check_sagas(ns, page, shown))
    check_dead_letters(ns, page, 1)
    page.open("/topology", "topology")
    for saga in ns.topology.sagas:
        assert browser.find_elements(By.ID, f"saga-{saga}"), saga

    approve_the_loan(ns, page)

    # the fix: the topic takes the order's shipping command again, and the orchestrator, which
    # reads the limits at its start, is restarted
    set_shipping_limit(ns, None)
    orchestrator.stop()
    start_workers("orchestrator")
    redrive(ns, page, poison.partition, poison.offset)
    assert wait_outcomes(ns, {POISON})[POISON].event_type == "SagaCompleted"
    page.open(f"/sagas/order/{POISON}", "saga-redriven")
    assert page.text("dd.status") == "completed"
    assert [m.key for m in every_dead_letter(ns)] == [POISON.encode()]


def status(outcome: str) -> str:
    return {"SagaCompleted": "completed", "SagaCompensated": "compensated"}[outcome]


def eventually(check: Callable[[], None], bound_s: float = 30.0) -> None:
    """`check` passes within `bound_s` (each try opens its page again), else its last failure."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def check_overview(ns: Any, page: Console) -> None:
    """Each saga type's totals are its outcome records of the hour, read committed."""
    page.open("/", "overview")
    outcomes = ns.client.read_to_end([ns.topic("sagas.outcomes")])
    with Client(ns.settings) as client:
        for saga in ns.topology.sagas:
            row = f'tr[data-saga="{saga}"]'
            started = client.list_sagas(saga=saga).matched
            assert page.text(f"{row} td.started") == str(started)
            for event, series in (
                ("SagaCompleted", "completed"),
                ("SagaCompensated", "compensated"),
            ):
                count = sum(
                    1
                    for m in outcomes
                    if m.event_type == event and m.record and m.record["saga_type"] == saga
                )
                assert page.text(f"{row} td.{series}") == str(count), (saga, series)
    assert page.text('tr[data-saga="loan"] td.running') == "1"


def check_sagas(ns: Any, page: Console, expected: dict[str, str]) -> None:
    """The sagas page lists every stored saga with its status, and one shows its own."""
    page.open("/sagas", "sagas")
    rows = page.driver.find_elements(By.CSS_SELECTOR, "table.sagas tbody tr")
    shown = {
        r.find_element(By.CSS_SELECTOR, "td.key").text: r.find_element(
            By.CSS_SELECTOR, "td.status"
        ).text
        for r in rows
    }
    with Client(ns.settings) as client:
        stored = {s.key: s.status for s in client.list_sagas().sagas}
        assert shown == stored == expected
        compensated = next(k for k, v in expected.items() if v == "compensated")
        view = client.describe("order", compensated)
    assert view is not None
    page.open(f"/sagas/order/{compensated}", "saga")
    assert page.text("dd.status") == "compensated"
    assert len(page.texts("table.history tbody tr")) == len(view.history)
    for step in view.steps:
        cell = page.driver.find_element(
            By.XPATH, f'//table[@class="steps"]//tr[td[1]="{step.name}"]/td[2]'
        )
        assert cell.text == step.state, step.name
    assert page.driver.find_elements(By.CSS_SELECTOR, "svg.timeline rect.bar.compensation")


def check_dead_letters(ns: Any, page: Console, count: int) -> None:
    """Every dead letter of the test's prefix is listed, grouped by topic and reason."""
    letters = every_dead_letter(ns)
    assert len(letters) == count
    page.open("/dlq", "dead-letters")
    assert page.text("main h2:nth-of-type(2)").startswith(f"Messages ({count})")
    assert len(page.texts("table.letters tbody tr")) == count
    groups = page.driver.find_elements(By.CSS_SELECTOR, "table.groups tbody tr")
    reasons = sorted(read_dead_letter_headers(m.headers)["reason"] for m in letters)
    assert sorted(g.find_elements(By.TAG_NAME, "td")[1].text for g in groups) == sorted(
        set(reasons)
    )


def approve_the_loan(ns: Any, page: Console) -> None:
    """Fill in the review's note on the loan's page, click approve, and see it complete."""
    page.open(f"/sagas/loan/{LOAN}", "saga-waiting")
    page.driver.find_element(By.CSS_SELECTOR, 'form.signal input[name="note"]').send_keys(
        "income verified"
    )
    page.submit('form.signal button[value="approved"]')
    assert page.driver.current_url.endswith("?signalled=approved"), page.body()
    assert "Your decision (approved) was written" in page.body()
    assert wait_outcomes(ns, {LOAN})[LOAN].event_type == "SagaCompleted"
    signals = ns.client.read_to_end([ns.topic("sagas.signals")])
    decided = [
        (m.record["outcome"], m.record["decided_by"], m.record["note"]) for m in signals if m.record
    ]
    assert decided == [("approved", "alice", "income verified")]
    page.open(f"/sagas/loan/{LOAN}")
    assert page.text("dd.status") == "completed"


def redrive(ns: Any, page: Console, partition: int, offset: int) -> None:
    """Tick the poison order on the dead-letter page, see the dry run, confirm it."""
    page.open("/dlq")
    page.tick(f'input[name="letter"][value="orders.events.dlq/{partition}/{offset}"]')
    page.submit('form[action="/dlq/redrive"] button[type="submit"]')
    assert page.text("p.summary") == (
        "would redrive 1 dead letters, refuse 0; nothing is sent before you confirm"
    )
    assert f"-> {ns.topic('orders.events')} as redrive 1" in page.text("tr.redrive-would")
    page.shoot("redrive-dry-run")
    page.submit("form.redrive button")
    assert page.text("p.summary") == (
        "redriven 1 (written, acknowledged by the broker), NOT written 0, refused 0"
    )
    page.shoot("redrive-done")
