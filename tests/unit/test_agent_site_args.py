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


AGENT_COMMANDS = [
    ["infer", "--federation", "fed", "--channel", "production", "--task", "fedvision-tiny", "--images", "."],
    ["track", "--federation", "fed", "--channel", "production", "--dir", "serving", "--once"],
    ["approve-release", "rel-0123456789ab"],
    ["request-run", "fed", "--reason", "new cameras"],
]


@pytest.mark.parametrize("argv", AGENT_COMMANDS, ids=lambda a: a[0])
def test_agent_commands_say_they_take_the_agents_identity(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main([argv[0], "--help"])
    assert e.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "this agent's enrolled cert.pem" in shown
    assert "default $FEDSTREAM_AGENT_TLS__IDENTITY_DIR or $FEDSTREAM_IDENTITY" in shown


def test_the_agents_identity_comes_before_an_operators(monkeypatch):
    import argparse

    from fedstream.dialing import AGENT_ENVS, add_identity_arguments

    monkeypatch.setenv("FEDSTREAM_AGENT_TLS__IDENTITY_DIR", "/srv/agent-identity")
    monkeypatch.setenv("FEDSTREAM_IDENTITY", "/srv/operator")
    p = argparse.ArgumentParser()
    add_identity_arguments(p, AGENT_ENVS)
    assert p.parse_args([]).identity == "/srv/agent-identity"
    monkeypatch.delenv("FEDSTREAM_AGENT_TLS__IDENTITY_DIR")
    p = argparse.ArgumentParser()
    add_identity_arguments(p, AGENT_ENVS)
    assert p.parse_args([]).identity == "/srv/operator"


@pytest.mark.parametrize("argv", AGENT_COMMANDS, ids=lambda a: a[0])
def test_an_agent_command_without_an_identity_is_a_usage_error_naming_where_it_looks(monkeypatch, capsys, tmp_path,
                                                                                     argv):
    monkeypatch.delenv("FEDSTREAM_AGENT_TLS__IDENTITY_DIR", raising=False)
    monkeypatch.delenv("FEDSTREAM_IDENTITY", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "$FEDSTREAM_AGENT_TLS__IDENTITY_DIR or $FEDSTREAM_IDENTITY" in err, err
