"""The SQLite state store's own promises, beyond the contract suite that every backend passes:
state that survives closing, reopening and a killed process; one file shared by several
processes with exactly one winner of each race; tenants apart; a versioned schema; and a
clear refusal of a file that cannot be used."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fedstream.backends import make_state_store
from fedstream.config import StateSettings
from fedstream.errors import RunNotFound, StorageUnusable
from fedstream.exitcodes import ExitCode
from fedstream.rounds import RoundKind, RoundPlan, UpdateReport
from fedstream.startup import StartupError
from fedstream.state import (
    AgentRecord,
    AggregationRecord,
    AuditEntry,
    EnrollmentTokenRecord,
    FederationRecord,
    RoundRecord,
    RunRecord,
    SQLiteStateStore,
    TokenRecord,
    sqlite_db,
)
from fedstream_testing.state_race import prepare


def fill(store: SQLiteStateStore) -> None:
    """One record of every role."""
    store.put_agent(AgentRecord("a", labels={"site": "x"}, cert_serials=["1"]))
    store.heartbeat("a", 42.0)
    store.create_run(RunRecord("r", {"task": "digits"}, created_unix=1.0))
    store.create_round(RoundRecord("r", 1, RoundKind.TRAIN, participants=["a"]))
    store.transition_round("r", 1, "training")
    store.create_aggregation(AggregationRecord(RoundPlan("r", 1, RoundKind.TRAIN, "r/000000", ("a",), 1, 9.0)))
    store.count_update("r", 1, "a", UpdateReport("a", 3))
    store.create_federation(FederationRecord("f", {"task": "digits"}))
    store.create_token(TokenRecord("t", "a" * 64, "admin"))
    store.create_enrollment_token(EnrollmentTokenRecord("e", "b" * 64, 100.0))
    store.mark_once("cron", "slot-1")
    store.acquire_lease("run:r", "scheduler-1", ttl_s=60, now_unix=100)


def test_everything_is_there_after_closing_and_reopening(tmp_path):
    first = SQLiteStateStore(tmp_path / "state.db", "t1")
    fill(first)
    first.close()

    store = SQLiteStateStore(tmp_path / "state.db", "t1")

    agent = store.get_agent("a")
    assert (agent.labels, agent.cert_serials, agent.last_heartbeat_unix) == ({"site": "x"}, ["1"], 42.0)
    assert store.get_run("r").spec == {"task": "digits"}
    assert store.get_round("r", 1).state == "training"
    assert store.get_aggregation("r", 1).reports == {"a": UpdateReport("a", 3)}
    assert [j.run_id for j in store.list_aggregations()] == ["r"]
    assert store.get_federation("f").spec == {"task": "digits"}
    assert store.find_token("a" * 64).token_id == "t"
    assert store.consume_enrollment_token("b" * 64).token_id == "e"
    assert store.is_marked("cron", "slot-1") and not store.mark_once("cron", "slot-1")
    assert not store.acquire_lease("run:r", "scheduler-2", ttl_s=60, now_unix=110)
    store.close()


def test_tenants_share_a_file_and_never_see_each_other(tmp_path):
    a, b = SQLiteStateStore(tmp_path / "state.db", "a"), SQLiteStateStore(tmp_path / "state.db", "b")
    fill(a)

    assert b.list_agents() == [] and b.list_runs() == [] and b.list_federations() == []
    assert b.list_aggregations() == [] and b.list_tokens() == [] and b.list_enrollment_tokens() == []
    assert not b.is_marked("cron", "slot-1")
    assert b.acquire_lease("run:r", "scheduler-2", ttl_s=60, now_unix=110)
    with pytest.raises(RunNotFound):
        b.get_run("r")
    b.put_agent(AgentRecord("a", labels={"site": "other"}))
    assert a.get_agent("a").labels == {"site": "x"}


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fedstream_testing.state_race", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_processes_sharing_a_file_have_one_winner_of_each_race_and_lose_no_update(tmp_path):
    path, go, n, names = tmp_path / "state.db", tmp_path / "go", 40, ["p0", "p1", "p2"]
    store = SQLiteStateStore(path)
    prepare(store, n)
    procs = [start("race", str(path), name, str(n), str(go)) for name in names]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr
    go.touch()  # all at once

    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))

    for race in ("agents", "marks", "leases", "updates", "transitions", "tokens"):
        won = sorted(i for r in results for i in r[race])
        assert won == list(range(n)), f"{race}: {won}"  # each one won exactly once
    for i in range(n):  # the record belongs to the process that won its creation
        winner = next(name for name, r in zip(names, results, strict=True) if i in r["agents"])
        assert store.get_agent(f"a{i}").cert_serials == [winner]
    assert len(store.get_aggregation("race", 1).reports) == n
    assert sorted(store.get_agent("shared").cert_serials) == sorted(f"{p}-{i}" for p in names for i in range(n))
    store.close()


def test_a_killed_process_loses_nothing_it_committed(tmp_path):
    path = tmp_path / "state.db"
    SQLiteStateStore(path).close()
    writer = start("commit", str(path))
    assert writer.stdout is not None
    committed = [int(writer.stdout.readline()) for _ in range(30)]

    writer.send_signal(signal.SIGKILL)
    writer.wait()

    store = SQLiteStateStore(path)
    stored = {r.run_id for r in store.list_runs()}
    assert {f"c{i}" for i in committed} <= stored
    assert stored == {f"c{i}" for i in range(len(stored))}  # and nothing half-written
    store.close()


def test_the_schema_is_versioned_and_a_newer_version_migrates_an_older_file(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    # A file written by the first schema, before the audit log's table existed.
    first = sqlite_db.MIGRATIONS[:1]
    with monkeypatch.context() as m:
        m.setattr(sqlite_db, "MIGRATIONS", first)
        m.setattr(sqlite_db, "SCHEMA_VERSION", len(first))
        fill(SQLiteStateStore(path))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    store = SQLiteStateStore(path)  # this version appends the audit log's migration

    assert store.get_run("r").spec == {"task": "digits"}  # the data is kept
    assert store.append_audit(AuditEntry("run.cancel", "run/r", "token/t")) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_db.SCHEMA_VERSION == 2
        assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 1
    store.close()


def test_a_file_of_a_newer_schema_is_refused_unchanged(tmp_path):
    path = tmp_path / "state.db"
    SQLiteStateStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={sqlite_db.SCHEMA_VERSION + 1}")

    with pytest.raises(StorageUnusable, match=f"{path}: it was written by a newer fedstream"):
        SQLiteStateStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_db.SCHEMA_VERSION + 1


@pytest.mark.parametrize("make", ["under_a_file", "two_below_a_file", "not_a_database"])
def test_a_path_that_cannot_be_used_is_refused_naming_it_and_its_setting(tmp_path, make):
    if make == "under_a_file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "state.db"
    elif make == "two_below_a_file":
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "sub" / "state.db"
    else:
        path = tmp_path / "state.db"
        path.write_bytes(b"not a database" * 100)
    settings = StateSettings(backend="sqlite", sqlite={"path": path})

    with pytest.raises(StartupError) as refused:
        make_state_store(settings, "t1")

    assert refused.value.code == ExitCode.BAD_DATA
    line = refused.value.line("FEDSTREAM_SCHEDULER_", {})
    assert line.startswith(f"FEDSTREAM_SCHEDULER_STATE__SQLITE__PATH={path} (the default): cannot use the state file {path}")
    if make != "not_a_database":
        assert f"cannot use the state file {path}: {tmp_path / 'file'} is a file, not a directory;" in line


@pytest.mark.parametrize(("synchronous", "level"), [("normal", 1), ("full", 2)])
def test_each_connection_flushes_as_the_settings_say(tmp_path, synchronous, level):
    settings = StateSettings(sqlite={"path": tmp_path / "state.db", "synchronous": synchronous})
    store = make_state_store(settings, "t1")
    assert isinstance(store, SQLiteStateStore)

    with store.db.connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_sqlite_is_the_default_backend_in_a_relative_data_directory():
    settings = StateSettings()

    assert settings.backend == "sqlite" and settings.shared
    assert settings.sqlite.path == Path("fedstream-data/state.db")
    assert not StateSettings(backend="memory").shared
