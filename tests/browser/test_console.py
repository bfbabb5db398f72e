"""The web console in a real browser (headless Chromium) against real servers with a federation
running: sign in with a token, watch a run progress without reloading, see agents and their
versions, a viewer refused a write (the button hidden, and a forced request answered 403),
hostile text shown literally and never run, a version's lineage graph, a release approved
by two admins, and a federation's privacy budget and a private run's epsilon per round."""

from __future__ import annotations

import re

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from fedstream_testing.browser import FEDERATION, HOSTILE, Console, sign_in, wait_for, wait_until
from fedstream_testing.support import wait_until as support_wait_until

COMMITTED = "return document.querySelectorAll('#run-live tr[data-state=committed]').length"


def no_script_ran(driver) -> None:
    assert driver.execute_script("return window.__pwned === undefined"), "hostile text ran as script"
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text


def test_sign_in_and_watch_a_run_progress(console: Console, driver):
    sign_in(driver, console, "operator")
    row = wait_for(driver, f"tr[data-federation={FEDERATION}]")
    assert "0 2 * * * Europe/Paris" in row.text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:00:00\nin \d+ (s|min|h)", row.text), row.text  # the next slot, and when

    row.find_element(By.CSS_SELECTOR, "button[data-action='Start run']").click()
    wait_for(driver, "#run-id")
    driver.execute_script("window.__sameDocument = true")  # gone if the page were reloaded
    # The run waits for its third agent: no round yet; then the third site comes, and its
    # rounds appear on the page as they commit.
    assert driver.execute_script(COMMITTED) == 0
    console.start_agent(2, 3)
    wait_until(driver, f"{COMMITTED} >= 1", timeout=180, what="a first committed round")
    wait_until(driver, "return document.getElementById('run-state').textContent.includes('succeeded')", timeout=240)

    assert driver.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    rows = driver.find_elements(By.CSS_SELECTOR, "#run-live tr[data-round]")
    assert len(rows) == 4  # the init round and three training rounds
    assert "site-2" in driver.find_element(By.CSS_SELECTOR, "#run-live tr[data-round='2']").get_attribute("textContent")
    assert driver.find_elements(By.CSS_SELECTOR, "svg.chart[data-metric=train_loss] circle.dot")
    assert not driver.find_element(By.CSS_SELECTOR, "button[data-action='Cancel run']").is_displayed()


def test_agents_show_status_versions_and_labels_as_text(console: Console, driver):
    sign_in(driver, console, "operator")
    driver.get(console.base + "/console/#/agents")
    row = wait_for(driver, "tr[data-agent=site-1]")
    assert "alive" in row.text
    assert "agent=" in row.text and "torch=" in row.text
    assert f"note={HOSTILE}" in row.text
    assert not row.find_elements(By.TAG_NAME, "img") and not row.find_elements(By.TAG_NAME, "script")
    no_script_ran(driver)


def test_a_viewer_is_refused_writes(console: Console, driver):
    sign_in(driver, console, "viewer")
    start = wait_for(driver, f"tr[data-federation={FEDERATION}] button[data-action='Start run']")
    assert not start.is_displayed()

    driver.get(console.base + "/console/#/agents")
    disable = wait_for(driver, "tr[data-agent=site-0] button[data-action=Disable]")
    assert not disable.is_displayed()
    # Forced: the hidden button shown and clicked (confirming its dialog); the API refuses.
    driver.execute_script("arguments[0].hidden = false; window.confirm = () => true;", disable)
    disable.click()
    flash = wait_for(driver, "#flash.flash-error")
    wait_until(driver, "return document.getElementById('flash').textContent.includes('403')")
    assert "this needs the operator role; the token is viewer" in flash.text
    assert console.call("GET", "/agents/site-0").json()["status"] == "alive"  # nothing changed

    driver.get(console.base + "/console/#/audit")
    assert "operator role" in wait_for(driver, "#audit-refused").text


def test_hostile_text_is_shown_literally_and_never_runs(console: Console, driver):
    sign_in(driver, console, "admin")
    row = wait_for(driver, f"tr[data-federation={FEDERATION}]")
    assert HOSTILE in row.find_element(By.CSS_SELECTOR, ".description").text
    assert not row.find_elements(By.TAG_NAME, "img")

    driver.get(console.base + "/console/#/audit?action=token.create")
    wait_until(driver, "return document.querySelectorAll('main tbody tr').length >= 4")
    assert f"name={HOSTILE}" in driver.find_element(By.TAG_NAME, "main").text
    no_script_ran(driver)


def test_the_console_loads_nothing_from_elsewhere_and_breaks_no_policy(console: Console, driver):
    sign_in(driver, console, "admin")
    for page in ("federations", "runs", "agents", "models", "requests", "audit"):
        driver.get(f"{console.base}/console/#/{page}")
        # Drawn: the models page of a tenant with one federation draws that federation's.
        wait_until(driver, f"return (document.body.dataset.shown || '').split('/')[0] === '{page}'")
        wait_for(driver, "main .panel")
    wait_for(driver, "main tbody tr")  # the audit log's entries: the last page is drawn
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(console.base + "/") for url in loaded), loaded
    problems = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
                and "status of 40" not in e["message"]]  # the refusals the tests above provoked
    assert not problems, problems


def test_a_version_lineage(console: Console, driver):
    runs = console.call("GET", f"/runs?federation={FEDERATION}&state=succeeded").json()["items"]
    assert runs, "the run of the first test did not succeed"
    version = runs[0]["latest_version"]
    run, number = version.split("/")
    sign_in(driver, console, "viewer")
    driver.get(f"{console.base}/console/#/model/{run}/{number}")
    graph = wait_for(driver, "#lineage-graph svg")
    shown = {a.get_attribute("data-version") for a in graph.find_elements(By.CSS_SELECTOR, "a.node-link")}
    parent = f"{run}/{int(number) - 1:06d}"
    assert {version, parent} <= shown
    graph.find_element(By.CSS_SELECTOR, f"a.node-link[data-version='{parent}']").click()
    wait_until(driver, f"return document.getElementById('model-version')?.textContent === '{parent}'")
    assert "site-0" in wait_for(driver, ".lineage").text


def test_a_release_needs_two_admins(console: Console, driver):
    version = console.call("GET", f"/federations/{FEDERATION}").json()["latest_version"]
    policy = {"releases": {"channels": {"production": {"admin_approvals": 2}}}}
    assert console.call("PATCH", f"/federations/{FEDERATION}", json=policy).status_code == 200
    proposed = console.call("POST", f"/federations/{FEDERATION}/releases", role="operator",
                            json={"channel": "production", "version": version, "note": "nightly"})
    assert proposed.status_code == 201, proposed.text
    release = proposed.json()["release_id"]

    for admin, state in (("admin", "proposed"), ("admin2", "released")):
        sign_in(driver, console, admin)
        driver.get(f"{console.base}/console/#/models/{FEDERATION}")
        wait_for(driver, f"tr[data-release='{release}'] button[data-action=Approve]").click()
        wait_until(driver, "return document.getElementById('flash').textContent === 'Approve: done'",
                   what=f"{admin}'s approval answered")
        wait_until(driver, f"return document.querySelector(\"tr[data-release='{release}']\")?.dataset.state === '{state}'",
                   what=f"release {state} after {admin}'s approval")
    assert version in wait_for(driver, ".channels").text


def test_privacy_on_the_federation_and_run_pages(console: Console, driver):
    private, secure = "private-cameras", "secure-cameras"
    spec = {"task": "digits", "rounds": 2, "min_agents": 2, "round_timeout_s": 120, "wait_for_agents_s": 120,
            "training": {"local_epochs": 1, "seed": 1}}
    privacy = {"mode": "central", "clip_norm": 0.1, "noise_multiplier": 0.5, "epsilon_budget": 1000.0, "delta": 1e-5}
    for fid, extra in ((private, {"privacy": privacy}), (secure, {"secure_aggregation": {"max_dropout": 0.2}})):
        made = console.call("POST", "/federations", json={"federation_id": fid, "spec": {**spec, **extra}})
        assert made.status_code == 201, made.text
    started = console.call("POST", f"/federations/{private}/runs", role="operator", json={"run_id": "private-run"})
    assert started.status_code == 201, started.text
    finished = lambda: console.call("GET", "/runs/private-run").json()["state"] != "running"  # noqa: E731
    support_wait_until(finished, timeout=240, what="the private run's end", interval=1)
    run = console.call("GET", "/runs/private-run").json()
    report = console.call("GET", f"/federations/{private}/privacy").json()
    assert run["state"] == "succeeded", run["reason"]

    sign_in(driver, console, "viewer")
    assert "central DP ε≤1000" in wait_for(driver, f"tr[data-federation={private}]").text
    assert "secure aggregation" in wait_for(driver, f"tr[data-federation={secure}]").text
    driver.find_element(By.LINK_TEXT, private).click()
    wait_until(driver, f"return document.body.dataset.shown === 'federations/{private}'")
    spent = driver.find_element(By.ID, "privacy-spent").text
    assert float(spent.split()[0]) == pytest.approx(report["spent"], rel=1e-3) and spent.endswith("of 1000")
    assert float(driver.find_element(By.ID, "privacy-remaining").text) == pytest.approx(report["remaining"], rel=1e-3)
    assert float(driver.find_element(By.ID, "privacy-bar").get_attribute("value")) == pytest.approx(report["spent"])
    facts = driver.find_element(By.ID, "privacy-facts").text
    assert "central" in facts and "Noise multiplier\n0.5" in facts and "Clip norm\n0.1" in facts and "1e-5" in facts
    charged = driver.find_elements(By.CSS_SELECTOR, "#privacy tr[data-run='private-run']")
    assert sorted(r.get_attribute("data-round") for r in charged) == ["1", "2"]
    assert driver.find_element(By.ID, "spec-secure-aggregation").text == "off"

    driver.get(f"{console.base}/console/#/runs/private-run")
    wait_until(driver, "return document.body.dataset.shown === 'runs/private-run'")
    assert "central DP" in driver.find_element(By.ID, "spec-privacy").text
    for r in run["rounds"]:
        shown = driver.find_element(By.CSS_SELECTOR, f"#run-live tr[data-round='{r['round']}'] td.epsilon").text
        expected = "—" if r["epsilon"] is None else pytest.approx(r["epsilon"], rel=1e-3)
        assert (shown if shown == "—" else float(shown)) == expected
    assert [r["epsilon"] is None for r in run["rounds"]] == [True, False, False]  # the init round spends nothing

    driver.get(f"{console.base}/console/#/federations/{secure}")
    wait_until(driver, f"return document.body.dataset.shown === 'federations/{secure}'")
    assert "20% may drop out" in driver.find_element(By.ID, "spec-secure-aggregation").text
    assert driver.find_element(By.ID, "spec-privacy").text == "off"
    assert not driver.find_elements(By.ID, "privacy")  # no privacy, nothing charged: no budget panel
