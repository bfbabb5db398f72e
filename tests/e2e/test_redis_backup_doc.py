"""docs/deploy.md's Redis backup and restore, run as written against real redis-servers.

The bundled Redis is started with the chart's own start-up script (taken from the rendered
StatefulSet: append-only file on, and the restore hook), fedstream state is written through
RedisStateStore while the append-only directory has both a rewritten base and appended
increments, the document's backup script and `kubectl exec` commands run with `kubectl exec POD
--` left off, the server and its directory are thrown away, the document's restore commands put
the archive in a fresh volume, and a fresh server started by the chart's script serves the state
back. What the document says the test substitutes is all it substitutes: the pod's Redis
address (127.0.0.1:6379, here a free port) and its volume (/data, here a directory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import helm_python as helm
import redis
import yaml

from fedstream.rounds import RoundKind, RunState
from fedstream.state import (
    AgentRecord,
    EnrollmentTokenRecord,
    FederationRecord,
    RoundRecord,
    RunRecord,
    TokenRecord,
)
from fedstream.state.redis import RedisStateStore, connect
from fedstream_testing.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "deploy.md").read_text()
PASSWORD = "backup-test-password"


def doc_blocks() -> list[str]:
    return re.findall(r"^```sh(?: example)?\n(.*?)^```", DOC, re.S | re.M)


def backup_script() -> str:
    (script,) = [b for b in doc_blocks() if re.search(r"^# redis-backup\.sh", b, re.M)]
    return script


def in_pod(marker: str) -> str:
    """The command a `kubectl exec ... --` line of the document runs in the Redis pod, with its
    local redirections: the line without `kubectl exec POD [-i] --`."""
    (line,) = [ln for b in doc_blocks() for ln in b.splitlines()
               if ln.startswith("kubectl ") and " exec tenant-a-fedstream-redis-0 " in ln and marker in ln]
    return line.split(" -- ", 1)[1]


def chart_start_script() -> str:
    rendered = helm.Chart.load(str(ROOT / "helm" / "fedstream")).render({}, name="tenant-a", namespace="tenant-a", is_install=True)
    docs = [d for d in yaml.safe_load_all(rendered["fedstream/templates/redis.yaml"]) if d]
    (redis_set,) = [d for d in docs if d["kind"] == "StatefulSet"]
    command = redis_set["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2])


def at(text: str, volume: Path | None = None, port: int | None = None) -> str:
    """``text`` with the pod's volume and Redis port replaced by this machine's (and nothing else)."""
    if volume is not None:
        text, n = re.subn(r"(?<![\w.])/data(?=[/\s'\"]|$)", str(volume), text)
        assert n, "no /data in the text"
    if port is not None:
        text, n = re.subn(r"-p 6379\b", f"-p {port}", text)
        assert n == 1, "the backup script names 127.0.0.1:6379 once"
    return text


class ChartRedis:
    """redis-server started by the chart's start-up script, with this test's volume and port."""

    def __init__(self, volume: Path, log: Path) -> None:
        self.volume, self.port, self.log = volume, free_port(), log
        script = at(chart_start_script(), volume=volume)
        script, n = re.subn(r"exec redis-server ", f"exec redis-server --port {self.port} --bind 127.0.0.1 ", script)
        assert n == 1
        with log.open("ab") as out:
            self.proc = subprocess.Popen(["sh", "-c", script], env={**os.environ, "REDIS_PASSWORD": PASSWORD},
                                         stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, password=PASSWORD, socket_connect_timeout=1)
        give_up = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < give_up and self.proc.poll() is None, log.read_text()
                time.sleep(0.05)
        self.client = client
        self.store = RedisStateStore(connect(f"redis://127.0.0.1:{self.port}/0", password=PASSWORD), "tenant-a")

    def persistence(self) -> dict:
        info: dict = self.client.info("persistence")
        return info

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def write_state(store: RedisStateStore, part: str) -> None:
    store.put_agent(AgentRecord(f"site-{part}", labels={"site": part}, tasks=["digits"], cert_serials=[f"{part}-1"],
                                registered_unix=1.0))
    store.heartbeat(f"site-{part}", 100.0)
    store.create_federation(FederationRecord(f"nightly-{part}", {"task": "digits", "rounds": 3},
                                             schedule={"cron": "0 2 * * *", "timezone": "UTC", "missed": "skip"}))
    store.create_run(RunRecord(f"run-{part}", {"task": "digits"}, federation=f"nightly-{part}", trigger="schedule"))
    store.create_round(RoundRecord(f"run-{part}", 1, RoundKind.TRAIN, participants=[f"site-{part}"]))
    store.update_run(f"run-{part}", latest_version=f"run-{part}/000001")
    store.create_token(TokenRecord(f"tok-{part}", sha256=f"{part}" * 8, role="operator"))
    store.create_enrollment_token(EnrollmentTokenRecord(f"enr-{part}", sha256=f"e{part}" * 8, expires_unix=9e9,
                                                        agent_id=f"site-{part}"))


def assert_state(store: RedisStateStore, part: str) -> None:
    agent = store.get_agent(f"site-{part}")
    assert agent.labels == {"site": part} and agent.cert_serials == [f"{part}-1"]
    assert agent.last_heartbeat_unix >= 100.0
    assert store.get_federation(f"nightly-{part}").schedule["cron"] == "0 2 * * *"
    run = store.get_run(f"run-{part}")
    assert run.latest_version == f"run-{part}/000001" and run.state == RunState.RUNNING
    assert [r.participants for r in store.list_rounds(f"run-{part}")] == [[f"site-{part}"]]
    token = store.find_token(f"{part}" * 8)
    assert token is not None and token.role == "operator"
    assert f"enr-{part}" in {t.token_id for t in store.list_enrollment_tokens()}


def wait_rewrite(server: ChartRedis) -> None:
    give_up = time.monotonic() + 30
    while server.persistence()["aof_rewrite_in_progress"] or server.persistence()["aof_rewrite_scheduled"]:
        assert time.monotonic() < give_up
        time.sleep(0.05)


def test_documented_redis_backup_restores_into_a_fresh_redis(tmp_path):
    work = tmp_path / "operator"
    work.mkdir()
    volume = tmp_path / "volume"
    volume.mkdir()
    server = ChartRedis(volume, tmp_path / "redis.log")
    # State in the rewritten base of the append-only directory, and state in its increments.
    write_state(server.store, "before")
    server.client.bgrewriteaof()
    wait_rewrite(server)
    write_state(server.store, "after")
    assert server.persistence()["aof_enabled"] == 1

    # The backup, as the document runs it in the pod, while the services keep writing.
    (work / "redis-backup.sh").write_text(at(backup_script(), port=server.port))
    stop, first = threading.Event(), threading.Event()

    def heartbeats() -> None:
        beat = 200.0
        while not stop.is_set():
            server.store.heartbeat("site-before", beat)
            first.set()
            beat += 1

    writer = threading.Thread(target=heartbeats)
    writer.start()
    try:
        assert first.wait(30)
        done = subprocess.run(["bash", "-c", in_pod("> redis-backup.tar")], cwd=work, capture_output=True, timeout=120,
                              env={**os.environ, "REDIS_PASSWORD": PASSWORD})
    finally:
        stop.set()
        writer.join()
    assert done.returncode == 0, done.stderr.decode()
    assert (work / "redis-backup.tar").stat().st_size > 0
    # The script put automatic rewrites back and left nothing behind on the volume.
    assert server.client.config_get("auto-aof-rewrite-percentage") == {"auto-aof-rewrite-percentage": "100"}
    assert "backup.tmp" not in {p.name for p in volume.iterdir()}

    # The disaster: the server and its volume are gone.
    server.stop()
    shutil.rmtree(volume)

    # The restore, as the document runs it: into a fresh volume, then the chart's Redis starts.
    fresh = tmp_path / "fresh-volume"
    fresh.mkdir()
    done = subprocess.run(["bash", "-c", at(in_pod("< redis-backup.tar"), volume=fresh)], cwd=work,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert (fresh / "restore" / "appendonlydir").is_dir() and not (fresh / "restore.tmp").exists()
    restored = ChartRedis(fresh, tmp_path / "restored.log")
    try:
        assert "fedstream: restored" in (tmp_path / "restored.log").read_text()
        assert not (fresh / "restore").exists()
        assert restored.persistence()["aof_enabled"] == 1
        assert_state(restored.store, "before")
        assert_state(restored.store, "after")
        assert restored.store.get_agent("site-before").last_heartbeat_unix >= 200.0  # written during the backup
        write_state(restored.store, "later")
    finally:
        restored.stop()

    # The restored directory is now the live one: a restart serves it, and what came after.
    again = ChartRedis(fresh, tmp_path / "again.log")
    try:
        assert "fedstream: restored" not in (tmp_path / "again.log").read_text()
        for part in ("before", "after", "later"):
            assert_state(again.store, part)
    finally:
        again.stop()
