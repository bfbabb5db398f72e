"""Screenshots of the web console for docs/console.md (`make console-screenshots`): starts a real
federation (aggregator, scheduler and two agents as processes), runs a federation's training
through the console in headless Chromium (and one under differential privacy through the API)
and saves each main page as docs/console/<page>.png."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from fedstream_testing import browser as b
from fedstream_testing.browser import FEDERATION, Console, sign_in, wait_for
from fedstream_testing.support import wait_until

PLAIN = "(Lyon, Nantes)"


def shoot(driver, out: Path, name: str) -> None:
    path = out / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"{path}: {path.stat().st_size // 1024} KiB", file=sys.stderr)


def pages(c: Console, driver, out: Path) -> None:
    driver.get(c.base + "/console/#/login")
    wait_for(driver, "#token")
    shoot(driver, out, "login")
    sign_in(driver, c, "operator")
    wait_for(driver, f"tr[data-federation={FEDERATION}]")
    shoot(driver, out, "federations")
    driver.find_element(By.CSS_SELECTOR, f"tr[data-federation={FEDERATION}] button[data-action='Start run']").click()
    wait_for(driver, "#run-id")
    b.wait_until(driver, "return document.getElementById('run-state').textContent.includes('succeeded')", timeout=300)
    driver.execute_script("window.scrollTo(0, 0)")
    shoot(driver, out, "run")
    version = c.call("GET", f"/federations/{FEDERATION}").json()["latest_version"]
    c.call("PATCH", f"/federations/{FEDERATION}", json={"releases": {"channels": {
        "production": {"admin_approvals": 2}, "staging": {"admin_approvals": 1}}}}).raise_for_status()
    c.call("POST", f"/federations/{FEDERATION}/releases", role="operator",
           json={"channel": "production", "version": version, "note": "night-time mAP up 4 points"}).raise_for_status()
    for name, route, drawn in (("agents", "agents", "tr[data-agent]"),
                               ("models", f"models/{FEDERATION}", "tr[data-version]"),
                               ("model", f"model/{version}", "#model-version")):
        driver.get(f"{c.base}/console/#/{route}")
        wait_for(driver, f"main {drawn}")
        shoot(driver, out, name)
    private_federation(c, driver, out)
    sign_in(driver, c, "admin")
    driver.get(f"{c.base}/console/#/audit")
    wait_for(driver, "main tbody tr")
    shoot(driver, out, "audit")


def private_federation(c: Console, driver: WebDriver, out: Path) -> None:
    """A federation under central differential privacy after a run: its page with its budget."""
    spec = {"task": "digits", "rounds": 3, "min_agents": 2, "round_timeout_s": 120, "wait_for_agents_s": 120,
            "training": {"local_epochs": 1, "seed": 1},
            "privacy": {"mode": "central", "clip_norm": 0.1, "noise_multiplier": 1.1, "epsilon_budget": 30.0,
                        "delta": 1e-5}}
    c.call("POST", "/federations", json={"federation_id": "private-cameras", "spec": spec,
                                         "description": "Entrance counts under central differential privacy"}
           ).raise_for_status()
    run = c.call("POST", "/federations/private-cameras/runs", role="operator", json={}).json()["run_id"]
    wait_until(lambda: c.call("GET", f"/runs/{run}").json()["state"] != "running", timeout=300, interval=1)
    driver.get(f"{c.base}/console/#/federations/private-cameras")
    wait_for(driver, "#privacy-bar")
    shoot(driver, out, "federation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/console"), help="where the PNG files go")
    args = parser.parse_args()
    if why := b.missing_browser():
        sys.exit(f"console screenshots need Chromium: {why}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedstream-console-") as work, \
            b.console_federation(Path(work), rounds=5, agents=2, text=PLAIN) as c:
        for i in range(2):
            c.start_agent(i, 2, note="north entrance")
        wait_until(lambda: c.alive() == 2, timeout=120, interval=0.5)
        driver = b.chromium()
        try:
            pages(c, driver, args.out)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
