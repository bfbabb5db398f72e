"""FedVision through the services at CI size: sites A, B and C hold generated VOC data sets;
two training rounds, a federated evaluation round, then the global model deployed on a
folder of images with `fedstream-agent infer`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedstream_tasks.detection.data import generate_sites
from fedstream_testing.helpers import run_script as run
from fedstream_testing.local import LocalFederation

TASK = "fedvision-tiny"


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return generate_sites(tmp_path_factory.mktemp("fedvision"), seed=1, size=64, scale=0.3)


def test_three_camera_owners_train_evaluate_and_deploy(sites, tmp_path, monkeypatch):
    with LocalFederation(tmp_path / "services") as fed:
        monkeypatch.setenv("FEDSTREAM_IDENTITY", str(fed.pki / "operator"))  # the CLI's operator certificate
        agg = fed.start_aggregator()
        sched = fed.start_scheduler(agg, {"HEARTBEAT_INTERVAL_S": "0.5"})
        for site in sites:
            fed.start_agent(site.name, sched, 0, 1, {
                "TASKS": f'["{TASK}"]', "DATA__PATH": str(site), "DEVICE": "cpu", "CPU_THREADS": "1",
            })
        started = run("fedstream", "grpc", "run-start", "--scheduler", sched, "--task", TASK, "--rounds", "2",
                      "--min-agents", "3", "--epochs", "1", "--batch-size", "8", "--evaluate-every", "2",
                      "--round-timeout", "180", "--run-id", "fv", "--follow")
        assert started.returncode == 0, started.stdout + started.stderr + fed.tail("scheduler")
        assert "round 2/2: committed fv/000002" in started.stdout
        assert "round 3 (evaluation of fv/000002): map" in started.stdout

        got = json.loads(run("fedstream", "grpc", "run-get", "fv", "--scheduler", sched).stdout)
        evaluation = got["rounds"][-1]
        assert evaluation["kind"] == "ROUND_KIND_EVALUATE"
        assert {"map", "map50"} <= set(evaluation["metrics"])
        held_out = {s.name: len((s / "ImageSets/Main/val.txt").read_text().split()) for s in sites}
        assert {r["agent_id"]: int(r["num_examples"]) for r in evaluation["reports"]} == held_out
        for rnd in got["rounds"][1:3]:  # training: each site reports loss, examples seen, seconds
            for r in rnd["reports"]:
                assert {"train_loss", "examples_seen", "train_seconds"} <= set(r["metrics"])

        out = tmp_path / "detections.json"
        images = sites[0] / "JPEGImages"
        deployed = run("fedstream-agent", "infer", "--aggregator", agg, "--run", "fv", "--task", TASK,
                       "--images", str(images), "-o", str(out), "--device", "cpu")
        assert deployed.returncode == 0, deployed.stderr
        doc = json.loads(out.read_text())
        assert doc["version"] == "fv/000002" and doc["task"] == TASK
        assert [Path(r["image"]).name for r in doc["images"]] == sorted(p.name for p in images.iterdir())
        for r in doc["images"]:
            assert (r["width"], r["height"]) == (64, 64)
            for d in r["detections"]:
                assert d["label"] in ("circle", "square", "triangle") and len(d["box"]) == 4

        missing = run("fedstream-agent", "infer", "--aggregator", agg, "--run", "nope", "--task", TASK,
                      "--images", str(images))
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
        no_folder = run("fedstream-agent", "infer", "--aggregator", agg, "--run", "fv", "--task", TASK,
                        "--images", str(tmp_path / "none"))
        assert no_folder.returncode == 2 and "is not a folder" in no_folder.stderr
        no_images = run("fedstream-agent", "infer", "--aggregator", agg, "--run", "fv", "--task", "digits",
                        "--images", str(images))
        assert no_images.returncode == 2 and "tasks that can:" in no_images.stderr and TASK in no_images.stderr
        fed.check_alive()


def test_an_agent_without_its_data_set_says_what_is_missing(tmp_path):
    with LocalFederation(tmp_path) as fed:
        proc = fed.start_agent("lost", "127.0.0.1:1", 0, 1, {"TASKS": f'["{TASK}"]'})
        assert proc.wait(timeout=120) == 4
        assert "FEDSTREAM_AGENT_DATA__PATH" in fed.tail("lost")
