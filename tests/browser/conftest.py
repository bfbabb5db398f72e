"""The browser tier: the web console in headless Chromium (Debian's chromium and
chromium-driver, installed by make system-deps) against a federation of real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fedstream_testing.browser import Console, chromium, console_federation, missing_browser
from fedstream_testing.support import wait_until


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A scheduler, an aggregator and two of the three agents its federation's runs need, as
    processes, with tokens of every role (the first test starts the third)."""
    with console_federation(tmp_path_factory.mktemp("console"), agents=3) as c:
        for i in range(2):
            c.start_agent(i, 3)
        wait_until(lambda: c.alive() == 2, timeout=120, what="two agents alive:\n" + c.fed.tail("scheduler"),
                   interval=0.5)
        yield c


@pytest.fixture(scope="module")
def driver():
    why = missing_browser()
    if why and os.environ.get("FEDSTREAM_REQUIRE_BROWSER"):
        pytest.fail(f"make test installs the browser, yet {why}")  # never a silent skip in CI
    if why:
        pytest.skip(why)
    d = chromium()
    yield d
    d.quit()
