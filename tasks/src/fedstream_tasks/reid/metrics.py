"""Re-identification by the Market-1501 protocol, in numpy.

For each query, gallery entries are ranked by cosine similarity of L2-normalised embeddings.
Gallery entries of the query's identity seen by the query's camera, and junk entries
(identity -1), are excluded; the good matches are the query's identity seen by other cameras.
CMC: the share of queries whose first good match is within the top k. AP: the area under the
precision-recall curve with the trapezoid rule of the benchmark's own code (precision before
and after each good match averaged). Queries without any good match are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JUNK = -1


@dataclass
class ReIDScores:
    rank1: float
    rank5: float
    rank10: float
    map: float
    queries: int  # queries with at least one good match

    def as_metrics(self) -> dict[str, float]:
        return {"rank1": self.rank1, "rank5": self.rank5, "rank10": self.rank10, "map": self.map}


def normalise(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit


def query_result(
    scores: np.ndarray, q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """(CMC row, AP) of one query given its similarity to every gallery entry; None when
    the gallery holds no good match for it."""
    order = np.argsort(-scores, kind="stable")
    pids, cams = g_pids[order], g_cams[order]
    junk = (pids == JUNK) | ((pids == q_pid) & (cams == q_cam))
    keep = ~junk
    good = (pids[keep] == q_pid)
    ngood = int(good.sum())
    if ngood == 0:
        return None
    rows = np.flatnonzero(good)
    cmc = np.zeros(len(good), dtype=np.float64)
    cmc[rows[0]:] = 1.0
    ap = 0.0
    for i, row in enumerate(rows):
        precision = (i + 1) / (row + 1)
        old_precision = i / row if row != 0 else 1.0
        ap += (1.0 / ngood) * (old_precision + precision) / 2
    return cmc, ap


def evaluate_reid(
    query: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray,
    gallery: np.ndarray, g_pids: np.ndarray, g_cams: np.ndarray,
) -> ReIDScores:
    """Rank-1/5/10 and mAP of query embeddings against gallery embeddings."""
    sims = normalise(query.astype(np.float64)) @ normalise(gallery.astype(np.float64)).T
    cmcs, aps = [], []
    width = len(g_pids)
    for i in range(len(q_pids)):
        result = query_result(sims[i], int(q_pids[i]), int(q_cams[i]), g_pids, g_cams)
        if result is None:
            continue
        cmc, ap = result
        row = np.ones(width)
        row[: len(cmc)] = cmc
        cmcs.append(row)
        aps.append(ap)
    if not cmcs:
        return ReIDScores(0.0, 0.0, 0.0, 0.0, 0)
    mean = np.mean(cmcs, axis=0)

    def at(k: int) -> float:
        return float(mean[min(k, width) - 1])

    return ReIDScores(at(1), at(5), at(10), float(np.mean(aps)), len(cmcs))
