"""`--face all`: every face of a video with a stable id, by greedy IoU matching.

Each frame's detections are matched to the live tracks by box overlap: the pair with
the highest IoU first, then the next among the still unmatched ones, down to `min_iou`.
A detection left over starts a new track (ids 0, 1, 2, ... in order of appearance,
left to right within a frame); a track unseen for more than `max_lost` frames ends and
its id is never reused. When boxes barely overlap (fast motion, low frame rate) the
distance between the landmark centroids, relative to the face size, decides instead.
Online and deterministic: one frame at a time, the same detections give the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes `a` [n, 4] against boxes `b` [m, 4] (x0, y0, x1, y1) -> [n, m]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


@dataclass
class IouTracker:
    """Greedy IoU (then landmark-distance) tracker; `update(boxes, landmarks)` -> one id per box."""

    min_iou: float = 0.3
    max_lost: int = 30  # frames a track may go unseen before it ends
    max_shift: float = 0.6  # landmark fallback: centroid shift <= this x the face width
    _boxes: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _centres: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _lost: dict[int, int] = field(default_factory=dict, repr=False)
    _next: int = 0

    @property
    def n_tracks(self) -> int:
        """Ids handed out so far."""
        return self._next

    def update(self, boxes: np.ndarray, landmarks: np.ndarray | None = None) -> list[int]:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if landmarks is not None and len(boxes):
            centres = np.asarray(landmarks, np.float64).reshape(len(boxes), -1, 2).mean(1)
        else:
            centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        ids = [-1] * len(boxes)
        live = sorted(self._boxes)
        if live and len(boxes):
            prev = np.stack([self._boxes[t] for t in live])
            score = iou_matrix(prev, boxes)
            width = np.maximum(prev[:, 2] - prev[:, 0], 1e-6)
            shift = np.linalg.norm(np.stack([self._centres[t] for t in live])[:, None] - centres[None], axis=2)
            near = (score < self.min_iou) & (shift <= self.max_shift * width[:, None])
            score = np.where(near, self.min_iou * (1 - shift / (self.max_shift * width[:, None] + 1e-9)) * 0.999,
                             score)  # a landmark match ranks below every IoU match
            ok = (score >= self.min_iou) | near
            order = np.argsort(-score, axis=None, kind="stable")
            used_t: set[int] = set()
            for flat in order:
                ti, di = divmod(int(flat), len(boxes))
                if not ok[ti, di] or ti in used_t or ids[di] >= 0:
                    continue
                ids[di] = live[ti]
                used_t.add(ti)
        for di in sorted((i for i in range(len(boxes)) if ids[i] < 0), key=lambda i: (boxes[i, 0], i)):
            ids[di] = self._next
            self._next += 1
        seen = set(ids)
        for t in list(self._boxes):
            if t not in seen:
                self._lost[t] += 1
                if self._lost[t] > self.max_lost:
                    del self._boxes[t], self._centres[t], self._lost[t]
        for di, t in enumerate(ids):
            self._boxes[t], self._centres[t], self._lost[t] = boxes[di].copy(), centres[di].copy(), 0
        return ids
