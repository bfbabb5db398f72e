"""VOC and COCO mAP against cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedstream_tasks.detection.metrics import ImageResult, coco_map, voc_map


def im(gt, det, gt_labels=None, det_labels=None, difficult=None):
    gt = np.asarray(gt, dtype=float).reshape(-1, 4)
    boxes = np.asarray([d[0] for d in det], dtype=float).reshape(-1, 4)
    scores = np.asarray([d[1] for d in det], dtype=float)
    return ImageResult(
        gt, np.asarray(gt_labels if gt_labels is not None else [0] * len(gt)),
        boxes, scores, np.asarray(det_labels if det_labels is not None else [0] * len(det)),
        None if difficult is None else np.asarray(difficult, dtype=bool),
    )


G1, G2 = (0, 0, 10, 10), (20, 20, 30, 30)


def test_duplicate_detection_is_a_false_positive():
    # Scores .9 (hits G1), .8 (G1 again, IoU .81: a duplicate), .7 (hits G2).
    # Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    images = [im([G1, G2], [(G1, 0.9), ((1, 1, 10, 10), 0.8), (G2, 0.7)])]
    # VOC all-point: 0.5 x 1 + 0.5 x 2/3.
    assert voc_map(images)["map"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # COCO: 51 recall points (0 .. 0.50) at precision 1, 50 at 2/3; the same at every IoU
    # threshold since the true positives overlap exactly.
    assert coco_map(images)["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_ranking_across_images():
    # A false positive outranks two true positives in other images: precision 0, 1/2, 2/3.
    images = [
        im([G1], [(G1, 0.6)]),
        im([G1], [((50, 50, 60, 60), 0.9), (G1, 0.3)]),
    ]
    assert voc_map(images)["map"] == pytest.approx(2 / 3)
    assert coco_map(images)["map"] == pytest.approx(2 / 3)


def test_coco_averages_over_iou_thresholds():
    # IoU 0.81: a hit at thresholds 0.50 .. 0.80 (7 of 10), a miss at 0.85, 0.90, 0.95.
    images = [im([G1], [((1, 1, 10, 10), 0.9)])]
    assert voc_map(images)["map"] == pytest.approx(1.0)
    got = coco_map(images)
    assert got["map"] == pytest.approx(0.7)
    assert got["map50"] == pytest.approx(1.0)


def test_empty_predictions_score_zero():
    images = [im([G1, G2], [])]
    assert voc_map(images, num_classes=1)["map"] == 0.0
    assert coco_map(images, num_classes=1)["map"] == 0.0


def test_classes_without_ground_truth_are_left_out():
    # Class 1 has detections but no ground truth: its AP is undefined and not averaged.
    images = [im([G1], [(G1, 0.9), (G2, 0.8)], gt_labels=[0], det_labels=[0, 1])]
    result = voc_map(images, num_classes=2)
    assert result["ap"] == {0: pytest.approx(1.0), 1: None}
    assert result["map"] == pytest.approx(1.0)
    assert coco_map(images, num_classes=2)["ap"][1] is None
    # No ground truth at all: 0.
    assert voc_map([im([], [(G1, 0.5)])], num_classes=1)["map"] == 0.0
    assert coco_map([im([], [])], num_classes=1)["map"] == 0.0


def test_detections_of_the_wrong_class_do_not_match():
    images = [im([G1], [(G1, 0.9)], gt_labels=[0], det_labels=[1])]
    assert voc_map(images, num_classes=2)["map"] == 0.0


def test_difficult_boxes_are_neither_rewarded_nor_penalised():
    # G2 is difficult: the detection on it is ignored and G2 is not counted in the recall.
    images = [im([G1, G2], [(G2, 0.95), (G1, 0.9)], difficult=[False, True])]
    assert voc_map(images)["map"] == pytest.approx(1.0)
    images = [im([G1, G2], [(G1, 0.9)], difficult=[False, True])]
    assert voc_map(images)["map"] == pytest.approx(1.0)


def test_low_overlap_is_a_miss():
    # IoU 25/175 with the only box: below 0.5.
    images = [im([G1], [((5, 5, 15, 15), 0.9)])]
    assert voc_map(images)["map"] == 0.0
    assert coco_map(images)["map"] == 0.0
