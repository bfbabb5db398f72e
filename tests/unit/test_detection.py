"""The detector's parts: box arithmetic, NMS, targets and loss, decoding, data loaders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedstream_tasks.base import SiteDataSettings, TrainParams
from fedstream_tasks.detection import DetectionTask
from fedstream_tasks.detection.boxes import batched_nms, giou, iou_matrix, nms
from fedstream_tasks.detection.data import (
    VOC_NAMES,
    AnnotationError,
    SiteDomain,
    generate_site,
    load_coco,
    load_voc,
    voc_to_coco,
    write_voc_annotation,
)
from fedstream_tasks.detection.loss import assign, detection_loss
from fedstream_tasks.detection.model import STRIDE, Detector, DetectorConfig, cell_centres, decode


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_iou_and_giou_by_hand():
    a, b = t([0, 0, 10, 10]), t([5, 0, 15, 10], [20, 20, 30, 30])
    np.testing.assert_allclose(iou_matrix(a, b).numpy(), [[50 / 150, 0.0]])
    # Disjoint: IoU 0, enclosing box 30x30 = 900, union 200: GIoU = -(900 - 200) / 900.
    np.testing.assert_allclose(giou(a[0], b[1]).item(), -700 / 900, rtol=1e-6)
    assert giou(a[0], a[0]).item() == pytest.approx(1.0)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = t([0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.1])
    # Box 1 (0.9) suppresses 0 (IoU 81/119 = 0.68) and 3 (IoU 72/118 = 0.61); 2 stands alone.
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    # At 0.7 box 0 survives box 1, and suppresses 3 itself (IoU 90/100).
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []
    # Per class: the same boxes of another class are not suppressed.
    labels = torch.tensor([0, 1, 0, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [1, 0, 2]


def test_assignment_centre_sampling_and_tiny_boxes():
    centres = cell_centres(8, 8)  # 64-pixel input
    boxes = t([0, 0, 40, 40], [50, 50, 54, 54])
    owner = assign(centres, boxes)
    big = centres[owner == 0]
    # Centre (20, 20), radius 12 pixels: cells with centres at 12, 20 and 28 on each axis.
    assert sorted({float(x) for x in big[:, 0]}) == [12.0, 20.0, 28.0]
    assert len(big) == 9
    # The 4-pixel box holds no cell centre: it gets the cell its centre (52, 52) falls in.
    assert centres[owner == 1].tolist() == [[52.0, 52.0]]
    assert (assign(centres, boxes[:0]) == -1).all()


def test_smaller_box_wins_a_shared_cell():
    centres = cell_centres(8, 8)
    owner = assign(centres, t([0, 0, 64, 64], [24, 24, 40, 40]))
    assert owner[(centres == torch.tensor([28.0, 28.0])).all(1)].item() == 1


def test_decode_reads_boxes_back_from_constructed_outputs():
    config = DetectorConfig(num_classes=2, input_size=64)
    out = torch.full((1, 7, 8, 8), -10.0)
    # Cell (row 2, col 3), centre (28, 20): an object of class 1 reaching 8 pixels each way.
    out[0, 0, 2, 3] = 10.0
    out[0, 2, 2, 3] = 10.0
    out[0, 3:, 2, 3] = math.log(8 / STRIDE)
    (found,) = decode(out, config)
    assert found["labels"].tolist() == [1]
    np.testing.assert_allclose(found["boxes"].numpy(), [[20, 12, 36, 28]], atol=1e-4)
    assert found["scores"].item() == pytest.approx(1.0, abs=1e-3)


def test_loss_is_finite_and_the_detector_fits_one_batch():
    torch.manual_seed(0)
    config = DetectorConfig(num_classes=3, input_size=64, width=0.25)
    model = Detector(config)
    images = torch.rand(4, 3, 64, 64)
    targets = [
        {"boxes": t([8, 8, 30, 30]), "labels": torch.tensor([0])},
        {"boxes": t([30, 10, 60, 40], [2, 40, 20, 62]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # background only
        {"boxes": t([0, 0, 64, 64]), "labels": torch.tensor([2])},
    ]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = detection_loss(model(images), targets, 3)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.25 * losses[0]


def write_site(tmp_path, images=12, size=64):
    domain = SiteDomain("T", "noise", (120, 120, 120), 1.0, 1.0, (0.4, 0.3, 0.3), images)
    generate_site(tmp_path / "site", domain, seed=3, size=size)
    return tmp_path / "site"


def test_generated_voc_site_loads_and_converts_to_coco(tmp_path):
    root = write_site(tmp_path)
    classes = ("circle", "square", "triangle")
    train, val = load_voc(root, "train", classes), load_voc(root, "val", classes)
    assert len(train) + len(val) == 12 and len(val) == 3
    for s in train + val:
        assert s.width == s.height == 64 and s.image.is_file()
        assert len(s.boxes) >= 1
        assert ((s.boxes[:, 2] > s.boxes[:, 0]) & (s.boxes[:, 3] > s.boxes[:, 1])).all()
        assert s.boxes.min() >= 0 and s.boxes.max() <= 64
    out = tmp_path / "coco.json"
    voc_to_coco(root, "train", classes, out)
    coco = load_coco(out, classes, root / "JPEGImages")
    assert [s.image for s in coco] == [s.image for s in train]
    for a, b in zip(coco, train, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes)
        assert a.labels.tolist() == b.labels.tolist()


def test_generated_site_under_voc_names_loads_for_the_full_size_task(tmp_path):
    domain = SiteDomain("T", "noise", (120, 120, 120), 1.0, 1.0, (0.4, 0.3, 0.3), 8)
    generate_site(tmp_path / "site", domain, seed=3, size=64, names=VOC_NAMES)
    task = DetectionTask("full")
    data = task.load_site(SiteDataSettings(path=tmp_path / "site"))
    labels = {int(label) for target in data.targets for label in target["labels"]}
    assert labels and {task.classes[i] for i in labels} <= set(VOC_NAMES)


@pytest.mark.parametrize("edit, message", [
    (lambda x: x.replace("<xmin>", "<xmin>abc"), "field 'bndbox/xmin' is 'abc"),
    (lambda x: x.replace("<name>circle</name>", "<name>dragon</name>"), "field 'name' is 'dragon'"),
    (lambda x: x.replace("<width>64</width>", ""), "missing field 'size/width'"),
    (lambda x: x.replace("<xmax>20</xmax>", "<xmax>80</xmax>"), "field 'bndbox' is (5, 6, 80, 30)"),
    (lambda x: x.replace("</annotation>", ""), "not readable XML"),
])
def test_malformed_voc_annotation_names_file_and_field(tmp_path, edit, message):
    root = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    xml = root / "Annotations" / "a.xml"
    write_voc_annotation(xml, "a.jpg", 64, 64, [("circle", (5, 6, 20, 30))])
    (root / "JPEGImages" / "a.jpg").write_bytes(b"")
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    assert len(load_voc(root, "train", ("circle",))) == 1
    xml.write_text(edit(xml.read_text()))
    with pytest.raises(AnnotationError) as err:
        load_voc(root, "train", ("circle",))
    assert str(xml) in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0].bbox is [1, 2, 3]"),
    (lambda d: d["annotations"][0].update(image_id=99), "annotations[0].image_id is 99"),
    (lambda d: d["annotations"][0].update(category_id=7), "annotations[0].category_id is 7"),
    (lambda d: d["annotations"][0].update(bbox=[60, 60, 10, 10]), "outside the 64x64 image"),
    (lambda d: d["categories"][0].update(name="dragon"), "categories[0].name is 'dragon'"),
    (lambda d: d.pop("images"), "field 'images' is missing"),
    (lambda d: d["images"][0].update(width=0), "images[0] needs"),
])
def test_malformed_coco_file_names_file_and_field(tmp_path, edit, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12]}],
        "categories": [{"id": 1, "name": "circle"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    assert len(load_coco(path, ("circle",))) == 1
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError) as err:
        load_coco(path, ("circle",))
    assert str(path) in str(err.value) and message in str(err.value)


def test_task_trains_evaluates_and_predicts_on_generated_files(tmp_path):
    root = write_site(tmp_path, images=24)
    task = DetectionTask("tiny")
    settings = SiteDataSettings(path=root)
    train, heldout = task.load_site(settings), task.load_heldout(settings)
    model = task.build_model(0)
    result = task.train(model, train, TrainParams(2, 8, 0.05, seed=1), torch.device("cpu"))
    assert result.num_examples == 18
    assert set(result.metrics) == {"train_loss", "examples_seen", "train_seconds", "cosine_distance"}
    assert result.metrics["examples_seen"] == 36  # two epochs of batches of 8, 8 and 2
    metrics = task.evaluate(model, heldout, torch.device("cpu"))
    assert set(metrics) == {"map50", "map", "examples"} and metrics["examples"] == 6
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0
    found = task.predict(model, [s.image for s in heldout.samples[:2]], torch.device("cpu"))
    assert [f["image"] for f in found] == [str(s.image) for s in heldout.samples[:2]]
    for f in found:
        for d in f["detections"]:
            assert d["label"] in task.classes and 0 <= d["score"] <= 1 and len(d["box"]) == 4
    with pytest.raises(ValueError, match="FEDSTREAM_AGENT_DATA__PATH"):
        task.load_site(SiteDataSettings())
