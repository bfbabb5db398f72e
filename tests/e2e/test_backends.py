"""The services as separate processes on Redis and S3: start-up while the servers are down,
and a whole run whose state lands in Redis and whose models land in S3."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedstream.config import S3Settings
from fedstream.state.redis import RedisStateStore, connect
from fedstream.store.s3 import S3ModelStore, make_client
from fedstream_testing.local import LocalFederation
from fedstream_testing.servers import RedisServer, S3Server, free_port
from fedstream_testing.support import wait_until

BIN = Path(sys.executable).parent


def health(procs: LocalFederation, addr: str) -> int:
    stub = health_pb2_grpc.HealthStub(procs.channel(addr))
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def backend_settings(redis_url: str, s3: S3Settings) -> dict[str, str]:
    return {
        "STATE__BACKEND": "redis",
        "STATE__REDIS__URL": redis_url,
        "STORE__BACKEND": "s3",
        "STORE__S3__ENDPOINT": s3.endpoint,
        "STORE__S3__ACCESS_KEY": "test",
        "STORE__S3__SECRET_KEY": "test",
        "STORE__S3__BUCKET": s3.bucket,
    }


def test_services_wait_not_serving_until_redis_and_s3_answer(tmp_path):
    redis_port, s3_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    s3 = S3Settings(endpoint=f"127.0.0.1:{s3_port}", bucket="startup")
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.port = redis_port
    s3_server = S3Server(port=s3_port)
    with LocalFederation(tmp_path) as procs:
        agg = procs.start_aggregator(backend_settings(redis_url, s3))
        sched = procs.start_scheduler(agg, {"STATE__BACKEND": "redis", "STATE__REDIS__URL": redis_url})
        try:
            wait_until(lambda: "cannot reach redis" in procs.tail("scheduler")
                       and "cannot reach S3" in procs.tail("aggregator"), 60, "no retry logged", interval=0.2)
            assert health(procs, agg) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert health(procs, sched) == health_pb2.HealthCheckResponse.NOT_SERVING

            time.sleep(2)  # several retries happen meanwhile: still one line each, no traceback
            redis_server.start()
            s3_server.start()

            wait_until(lambda: health(procs, agg) == health_pb2.HealthCheckResponse.SERVING, 60, "aggregator",
                       interval=0.2)
            wait_until(lambda: health(procs, sched) == health_pb2.HealthCheckResponse.SERVING, 60, "scheduler",
                       interval=0.2)
            procs.check_alive()
            for name in ("aggregator", "scheduler"):
                log = (tmp_path / f"{name}.log").read_text()
                assert "Traceback" not in log
            agg_log = (tmp_path / "aggregator.log").read_text()
            assert agg_log.count(f"cannot reach redis at 127.0.0.1:{redis_port}") == 1
            assert agg_log.count(f"cannot reach S3 at 127.0.0.1:{s3_port} (bucket startup)") == 1
        finally:
            redis_server.stop()
            s3_server.stop()


def test_a_run_keeps_its_state_in_redis_and_its_models_in_s3(tmp_path, redis_url, s3_settings):
    with LocalFederation(tmp_path) as procs:
        agg = procs.start_aggregator(backend_settings(redis_url, s3_settings))
        sched = procs.start_scheduler(agg, {
            "STATE__BACKEND": "redis", "STATE__REDIS__URL": redis_url, "HEARTBEAT_INTERVAL_S": "0.5",
        })
        for i in range(2):
            procs.start_agent(f"site-{i}", sched, i, 2, {"DEVICE": "cpu", "CPU_THREADS": "1"})

        result = subprocess.run(
            [str(BIN / "fedstream"), "grpc", "run-start", "--scheduler", sched, "--task", "digits", "--rounds", "2", "--min-agents", "2",
             "--epochs", "1", "--run-id", "on-redis", "--follow", "--identity", str(procs.pki / "operator")],
            capture_output=True, text=True, timeout=300,
        )

        assert result.returncode == 0, result.stdout + result.stderr + procs.tail("aggregator")
    state = RedisStateStore(connect(redis_url), "default")
    assert state.get_run("on-redis").state == "succeeded"
    assert [(r.round, r.state) for r in state.list_rounds("on-redis")] == [
        (0, "committed"), (1, "committed"), (2, "committed")]
    store = S3ModelStore(make_client(s3_settings), s3_settings, tmp_path / "staging", "default")
    assert store.versions("on-redis") == ["on-redis/000000", "on-redis/000001", "on-redis/000002"]
    assert store.latest("on-redis") == "on-redis/000002"


@pytest.mark.parametrize("command", ["fedstream-scheduler", "fedstream-aggregator"])
def test_bad_backend_names_are_refused_at_start(command):
    import os

    prefix = "FEDSTREAM_SCHEDULER_" if "scheduler" in command else "FEDSTREAM_AGGREGATOR_"
    result = subprocess.run([str(BIN / command)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, prefix + "STATE__BACKEND": "etcd"})
    assert result.returncode == 2
    assert f"{prefix}STATE__BACKEND=etcd: " in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["fedstream-scheduler", "fedstream-aggregator"])
def test_a_taken_metrics_port_exits_3_naming_it(command, tmp_path):
    import os
    import socket

    prefix = "FEDSTREAM_SCHEDULER_" if "scheduler" in command else "FEDSTREAM_AGGREGATOR_"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, prefix + "GRPC__PORT": "0", prefix + "GRPC__HOST": "127.0.0.1",
               prefix + "METRICS__HOST": "127.0.0.1", prefix + "METRICS__PORT": str(port),
               prefix + "API__PORT": "0", prefix + "STORE__PATH": str(tmp_path / "models"),
               prefix + "SPOOL_DIR": str(tmp_path / "spool"), prefix + "TLS__INSECURE_PLAINTEXT": "true"}
        if "aggregator" in command:
            env.pop(prefix + "API__PORT")
        else:
            env.pop(prefix + "SPOOL_DIR")
        result = subprocess.run([str(BIN / command)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 3, result.stderr
    assert f"{prefix}METRICS__PORT={port}: cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr


@pytest.mark.parametrize("command", ["fedstream-scheduler", "fedstream-aggregator"])
def test_without_tls_settings_a_service_exits_2_and_plaintext_must_be_asked_for(command, tmp_path):
    import os
    import socket

    prefix = "FEDSTREAM_SCHEDULER_" if "scheduler" in command else "FEDSTREAM_AGGREGATOR_"
    env = {**os.environ, prefix + "GRPC__PORT": "0", prefix + "GRPC__HOST": "127.0.0.1",
           prefix + "METRICS__ENABLED": "false", prefix + "STORE__PATH": str(tmp_path / "models"),
           prefix + "SPOOL_DIR": str(tmp_path / "spool")}
    if "scheduler" in command:
        env[prefix + "API__ENABLED"] = "false"
        env.pop(prefix + "SPOOL_DIR")

    refused = subprocess.run([str(BIN / command)], capture_output=True, text=True, timeout=60, env=env)
    # Plaintext when asked: it warns and serves (until its gRPC port is taken).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        env[prefix + "GRPC__PORT"] = str(taken.getsockname()[1])
        env[prefix + "TLS__INSECURE_PLAINTEXT"] = "true"
        env.pop(prefix + "GRPC__HOST")
        env[prefix + "GRPC__HOST"] = "127.0.0.1"
        plaintext = subprocess.run([str(BIN / command)], capture_output=True, text=True, timeout=60, env=env)

    assert refused.returncode == 2 and f"{prefix}TLS__CA_FILE is not set" in refused.stderr, refused.stderr
    assert "PLAINTEXT" in plaintext.stderr and "development" in plaintext.stderr, plaintext.stderr
    assert plaintext.returncode == 3, plaintext.stderr
