"""fedstream-agent's site commands refuse arguments that would make them misbehave, before any call."""

from __future__ import annotations

import pytest

from fedstream_agent.main import main


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf", "soon"])
def test_track_refuses_an_interval_that_is_no_pause(tmp_path, capsys, seconds):
    with pytest.raises(SystemExit) as e:
        main(["track", "--federation", "fed", "--channel", "production", "--dir", str(tmp_path / "serving"),
              "--interval-s", seconds])
    assert e.value.code == 2
    assert "--interval-s" in capsys.readouterr().err
    assert not (tmp_path / "serving").exists()


def test_track_takes_a_fraction_of_a_second():
    from fedstream_agent.site import interval

    assert interval("0.5") == 0.5
