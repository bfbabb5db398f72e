"""FedReID's pieces: the Market-1501 protocol on hand-computed cases, file names, the
generated sites, the model's shared and private tensors, training and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedstream_tasks import get_task
from fedstream_tasks.base import SiteDataSettings, TrainParams
from fedstream_tasks.reid.data import ReIDDataError, SiteSpec, generate_sites, parse_name, training_entries
from fedstream_tasks.reid.metrics import evaluate_reid, query_result
from fedstream_tasks.reid.model import ReIDConfig, ReIDNet


def test_one_query_by_hand():
    # Gallery in score order: 0 same id same camera (excluded), 1 junk (excluded), 2 other id,
    # 3 good, 4 other id, 5 good. Kept ranking: other, GOOD, other, GOOD.
    scores = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    pids = np.array([7, -1, 3, 7, 4, 7])
    cams = np.array([1, 2, 2, 2, 3, 3])
    cmc, ap = query_result(scores, 7, 1, pids, cams)
    assert cmc.tolist() == [0, 1, 1, 1]
    # Good matches at ranks 2 and 4: (1/2)((0/1 + 1/2)/2) + (1/2)((1/3 + 2/4)/2).
    assert ap == pytest.approx(0.5 * (0 + 0.5) / 2 + 0.5 * (1 / 3 + 0.5) / 2)


def test_first_rank_hit_and_no_match():
    scores = np.array([0.9, 0.1])
    cmc, ap = query_result(scores, 5, 1, np.array([5, 6]), np.array([2, 2]))
    assert cmc.tolist() == [1, 1] and ap == pytest.approx(1.0)
    # Its only same-id image is from its own camera: no good match, the query is left out.
    assert query_result(scores, 5, 1, np.array([5, 6]), np.array([1, 2])) is None


def test_ranks_and_map_over_queries():
    gallery = np.array([[1, 0], [0, 1], [0.7, 0.7], [-1, 0]], dtype=float)
    g_pids, g_cams = np.array([1, 2, 3, 0]), np.array([2, 2, 2, 2])  # pid 0: a distractor
    query = np.array([[1, 0.1], [0.1, 1], [0, -1]], dtype=float)
    q_pids, q_cams = np.array([1, 3, 9]), np.array([1, 1, 1])  # identity 9 is in no gallery
    s = evaluate_reid(query, q_pids, q_cams, gallery, g_pids, g_cams)
    # Query 1 finds its match first; query 3 ranks pid 2, then its match (AP (0 + 1/2)/2).
    assert s.queries == 2
    assert s.rank1 == pytest.approx(0.5) and s.rank5 == pytest.approx(1.0)
    assert s.map == pytest.approx((1.0 + 0.25) / 2)


@pytest.mark.parametrize("name, pid, cam", [
    ("0002_c1s1_000451_03.jpg", 2, 1),      # Market-1501
    ("-1_c3s2_012345_01.jpg", -1, 3),       # junk
    ("0000_c6s4_000001_00.jpg", 0, 6),      # distractor
    ("0005_c2_f0046182.jpg", 5, 2),         # DukeMTMC-reID
])
def test_file_names_parse(tmp_path, name, pid, cam):
    e = parse_name(tmp_path / name)
    assert (e.pid, e.cam) == (pid, cam)


@pytest.mark.parametrize("name", ["person1.jpg", "0002_x1_000.jpg", "abcd_c1s1_0.jpg", "0002_c1s1_000451_03.txt"])
def test_names_that_do_not_parse_are_named(tmp_path, name):
    with pytest.raises(ReIDDataError, match=name.replace(".", r"\.")):
        parse_name(tmp_path / name)


def test_generated_sites_have_disjoint_identities_and_the_layout(tmp_path):
    sites, public = generate_sites(tmp_path, seed=2, sites=(SiteSpec("a", 6, 3), SiteSpec("b", 3, 2, 1)))
    ids = []
    for root in sites:
        for split in ("bounding_box_train", "query", "bounding_box_test"):
            assert any((root / split).iterdir())
        entries, n = training_entries(root)
        assert n == len({e.pid for e in entries}) and sorted({e.pid for e in entries}) == list(range(n))
        ids.append({parse_name(p).pid for p in (root / "bounding_box_train").iterdir()})
        gallery = [parse_name(p) for p in (root / "bounding_box_test").iterdir()]
        assert any(e.pid == 0 for e in gallery) and any(e.pid == -1 for e in gallery)
    assert not ids[0] & ids[1]
    assert len(list(public.iterdir())) == 64
    (sites[0] / "query" / "bad.jpg").write_bytes(b"")
    with pytest.raises(ReIDDataError, match=r"bad\.jpg"):
        get_task("fedreid-tiny").load_heldout(SiteDataSettings(path=sites[0]))


def test_shared_and_private_tensors():
    task = get_task("fedreid-tiny")
    names = list(ReIDNet(task.config, 5).state_dict())
    private = [n for n in names if not task.is_shared(n)]
    assert private == ["classifier.weight", "classifier.bias"]
    assert "bottleneck.1.running_mean" in names and task.is_shared("bottleneck.1.running_mean")
    assert any(n.startswith("backbone.") and n.endswith("running_var") for n in names)


def test_distillation_moves_the_student_toward_the_teachers_mean_embedding(tmp_path):
    _, public_dir = generate_sites(tmp_path, seed=3, sites=(SiteSpec("a", 3, 2),), public_images=48)
    task = get_task("fedreid-tiny")
    public = task.load_public(public_dir)
    assert public.shape == (48, 3, 64, 32) and public.dtype == torch.uint8

    def shared(seed):
        return {k: v for k, v in task.build_model(seed).state_dict().items() if task.is_shared(k)}

    student, teachers = shared(0), [shared(1), shared(2)]
    out, figures = task.distill(student, iter(teachers), public, 0.05, torch.device("cpu"))
    assert set(out) == set(student)
    assert figures["distill_teachers"] == 2 and figures["distill_images"] == 48
    assert figures["distill_mse_after"] < figures["distill_mse_before"]
    # Teachers are used in evaluation mode: their embeddings are deterministic, so is the result.
    again, _ = task.distill(student, iter(teachers), public, 0.05, torch.device("cpu"))
    for k in out:
        torch.testing.assert_close(out[k], again[k])
    with pytest.raises(ValueError, match="missing"):
        task.distill({"x": torch.zeros(1)}, iter(teachers), public, 0.05, torch.device("cpu"))
    with pytest.raises(ValueError, match="at least one teacher"):
        task.distill(student, iter([]), public, 0.05, torch.device("cpu"))
    assert task.supports_distillation and not get_task("digits").supports_distillation


def test_full_size_is_resnet50():
    model = ReIDNet(ReIDConfig(), 751)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == 23_508_032  # torchvision's resnet50 without its fc layer
    out = model.backbone.stem(torch.zeros(1, 3, 256, 128))
    assert out.shape[-2:] == (64, 32)


def test_site_trains_and_evaluates(tmp_path):
    sites, _ = generate_sites(tmp_path, seed=0, sites=(SiteSpec("a", 12, 3),))
    task = get_task("fedreid-tiny")
    settings = SiteDataSettings(path=sites[0])
    train, heldout = task.load_site(settings), task.load_heldout(settings)
    assert task.num_ids == 8
    model = task.build_model(0)
    assert model.classifier.out_features == 8
    result = task.train(model, train, TrainParams(3, 16, 0.05, seed=1), torch.device("cpu"))
    assert result.num_examples == 8 * 3 * 2
    assert result.metrics["cosine_distance"] > 0
    metrics = task.evaluate(model, heldout, torch.device("cpu"))
    assert set(metrics) == {"rank1", "rank5", "rank10", "map", "examples"}
    assert metrics["examples"] == 4 * 2  # 4 test identities, a query from each camera but the last
    assert 0 <= metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"] <= 1
