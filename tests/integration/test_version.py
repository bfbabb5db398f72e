"""`--version` on each service's entry point answers in-process, before any settings are read.

(The services' modules import their web and gRPC stacks, which may run helper processes while
loading, so this lives outside the process-free unit tier.)"""

from __future__ import annotations

import importlib
from importlib.metadata import version

import pytest

MAINS = {
    "fedstream-scheduler": "fedstream_scheduler.main",
    "fedstream-aggregator": "fedstream_aggregator.main",
    "fedstream-agent": "fedstream_agent.main",
}


@pytest.mark.parametrize("command, module", MAINS.items())
def test_version_prints_the_distribution_version_and_exits_0(command, module, capsys):
    main = importlib.import_module(module).main

    with pytest.raises(SystemExit) as done:
        main(["--version"])

    assert done.value.code == 0
    assert capsys.readouterr().out == f"{command} {version(command)}\n"
