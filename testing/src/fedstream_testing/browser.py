"""The web console in a real browser: Debian's headless Chromium driven by Selenium (never
Selenium Manager: nothing is downloaded), against a real federation started as processes.
Shared by the browser tests (tests/browser) and the screenshots of docs/console.md."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from fedstream_testing.local import LocalFederation

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 860)
# Text a site or an operator controls, shown by the console: it must appear as written and
# never run (it would set window.__pwned).
HOSTILE = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script>"\'&amp;'
FEDERATION = "street-cameras"


def missing_browser() -> str:
    """Why no browser test can run here (empty when Chromium and its driver are installed)."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    return f"{' and '.join(absent)} not installed (make system-deps installs chromium, chromium-driver)" if absent else ""


def chromium(width: int = WINDOW[0], height: int = WINDOW[1]) -> WebDriver:
    """Headless Chromium at a fixed window size, driven through Debian's chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--disable-extensions", "--no-first-run", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # for driver.get_log("browser")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


@dataclass
class Console:
    """A running federation and its scheduler's console: base URL, and a token per role."""

    fed: LocalFederation
    scheduler: str
    base: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.base + "/api/v1"

    def call(self, method: str, path: str, role: str = "admin", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.request(method, self.api + path, headers=headers, timeout=30, **kw)

    def start_agent(self, index: int, sites: int, note: str = HOSTILE) -> None:
        """Agent site-<index> on CPU, holding slice ``index`` of ``sites`` of the data, with a
        label ``note``."""
        self.fed.start_agent(f"site-{index}", self.scheduler, index, sites, {
            "DEVICE": "cpu", "CPU_THREADS": "1", "LABELS": json.dumps({"site": f"camera-{index}", "note": note}),
        })

    def alive(self) -> int:
        """How many agents are alive."""
        return len(self.call("GET", "/agents?status=alive").json()["items"])


def _wait_api(base: str, token: str, fed: LocalFederation) -> None:
    give_up = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError("the scheduler's API never answered:\n" + fed.tail("scheduler"))
        fed.check_alive()
        time.sleep(0.2)


@contextlib.contextmanager
def console_federation(workdir: Path, rounds: int = 3, agents: int = 3, text: str = HOSTILE) -> Iterator[Console]:
    """An aggregator and a scheduler as processes (with TLS, as deployed), tokens of every role
    (two admins, and a viewer named ``text``), and a federation of the digits task whose runs
    need ``agents`` agents and whose description ends with ``text``. Agents are started by
    ``Console.start_agent``."""
    admin = "fst_console_" + secrets.token_urlsafe(24)
    with LocalFederation(workdir) as fed:
        agg = fed.start_aggregator()
        scheduler = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5", "API__BOOTSTRAP_TOKEN": admin})
        base = fed.api_url().removesuffix("/api/v1")
        _wait_api(base, admin, fed)
        console = Console(fed, scheduler, base, {"admin": admin})
        made_as = {"viewer": ("viewer", "dashboards"), "operator": ("operator", "night shift"),
                   "admin2": ("admin", "second admin"), "named": ("viewer", text)}
        for key, (role, name) in made_as.items():
            made = console.call("POST", "/tokens", json={"role": role, "name": name})
            made.raise_for_status()
            console.tokens[key] = made.json()["token"]
        created = console.call("POST", "/federations", json={
            "federation_id": FEDERATION, "description": f"Night-time detection across sites {text}",
            "schedule": {"cron": "0 2 * * *", "timezone": "Europe/Paris"},
            "spec": {"task": "digits", "rounds": rounds, "min_agents": agents, "round_timeout_s": 120,
                     "wait_for_agents_s": 120, "training": {"local_epochs": 1, "seed": 1}},
        })
        created.raise_for_status()
        yield console


def sign_in(driver: WebDriver, console: Console, role: str) -> None:
    """Opens the console afresh (a new tab session: no token) and signs in with ``role``'s token."""
    driver.get(console.base + "/console/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(console.base + "/console/#/login")
    field_ = wait_for(driver, "#token")
    field_.send_keys(console.tokens[role])
    driver.find_element(By.ID, "sign-in").click()
    # Signed in once the page it leads to is drawn (a #logout of the tab's previous token may
    # still be on the sign-in page until then).
    wait_until(driver, "return document.body.dataset.shown === 'federations'")


def wait_for(driver: WebDriver, css: str, timeout: float = 30) -> WebElement:
    """The first element matching ``css`` once it is in the page."""
    try:
        return WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.CSS_SELECTOR, css))
    except TimeoutException:
        raise AssertionError(f"no {css} after {timeout} s on {driver.current_url}") from None


def wait_until(driver: WebDriver, script: str, timeout: float = 30, what: str = "") -> Any:
    """The value of ``script`` (JavaScript returning a value) once it is truthy."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: d.execute_script(script))
    except TimeoutException:
        raise AssertionError(f"{what or script} not true after {timeout} s on {driver.current_url}") from None
