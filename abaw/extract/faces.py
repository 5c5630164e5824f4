"""Face detection (MTCNN), choosing one person per video, and 5-point alignment.

- `FaceDetector`: batched MTCNN (facenet-pytorch) on CPU or GPU, optionally on a
  downscaled copy of the frames (`detect_size`), returning boxes, scores and the five
  landmarks (left eye, right eye, nose, left and right mouth corner) in frame pixels.
- Selection policies decide, frame by frame, which detection is "the" person of a
  video: `largest` (per frame), `track` (follow one face by overlap, re-acquire the
  largest after a long loss) and `left-right` (two people, Aff-Wild2's `_left` /
  `_right`). They are online, so a video is never held in memory.
- `similarity_transforms` fits the least-squares similarity (Umeyama) from landmarks
  to the standard 112x112 template; `warp_faces` cuts the aligned crops with torch
  (`grid_sample`, anti-aliased when the face is larger than the crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from abaw.data.face_render import TEMPLATE_112

POLICIES = ("track", "largest", "left-right")
FACTOR = 0.709  # MTCNN image pyramid scale step


@dataclass
class Detections:
    """Faces found in one frame: boxes x0,y0,x1,y1 [k,4], scores [k], landmarks [k,5,2]."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))

    def areas(self) -> np.ndarray:
        b = self.boxes
        return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


class FaceDetector:
    """Batched MTCNN. `detect_size`: longest side of the copy detection runs on (0: full).

    `impl='batched'` (default) runs the three MTCNN networks of facenet-pytorch in our own
    cascade: candidate windows of all frames are cropped and resized in one `roi_align`
    call per stage (zero padding at the borders, as in the original MTCNN) instead of one
    resize per window, which makes textured frames with thousands of candidates fast on
    CPU and GPU alike. `impl='facenet'` calls facenet-pytorch's own `detect_face`.
    """

    def __init__(self, device: str | torch.device = "cpu", detect_size: int = 640, min_face: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = FACTOR,
                 impl: str = "batched"):
        from facenet_pytorch import MTCNN

        if impl not in ("batched", "facenet"):
            raise ValueError(f"impl must be 'batched' or 'facenet', not {impl!r}")
        self.device = torch.device(device)
        self.detect_size = int(detect_size)
        self.min_face = int(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.impl = impl
        m = MTCNN(device=self.device, min_face_size=self.min_face, thresholds=list(self.thresholds),
                  factor=self.factor, keep_all=True)
        self.pnet, self.rnet, self.onet = m.pnet.eval(), m.rnet.eval(), m.onet.eval()

    def settings(self) -> dict:
        return {"detector": f"mtcnn ({self.impl})", "detect_size": self.detect_size, "min_face": self.min_face,
                "thresholds": list(self.thresholds), "factor": self.factor}

    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> list[Detections]:
        """Detect faces in a [B, H, W, 3] uint8 batch (on any device); coordinates in frame
        pixels (pixel centres at integers)."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected [B, H, W, 3] frames, got {tuple(frames.shape)}")
        if len(frames) == 0:
            return []
        frames = frames.to(self.device, non_blocking=True)
        h, w = frames.shape[1:3]
        x = frames.permute(0, 3, 1, 2).float()  # [B, 3, H, W], 0..255
        if self.detect_size and max(h, w) > self.detect_size:
            scale = self.detect_size / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(x, size=size, mode="area")
            sy, sx = size[0] / h, size[1] / w
        else:
            sy = sx = 1.0
        if self.impl == "batched":
            res = self._cascade(x)
        else:
            res = self._facenet(x)
        for d in res:
            if len(d):  # detection pixels -> frame pixels (centres at integers on both)
                d.boxes[:, [0, 2]] = (d.boxes[:, [0, 2]] + 0.5) / sx - 0.5
                d.boxes[:, [1, 3]] = (d.boxes[:, [1, 3]] + 0.5) / sy - 0.5
                d.landmarks[..., 0] = (d.landmarks[..., 0] + 0.5) / sx - 0.5
                d.landmarks[..., 1] = (d.landmarks[..., 1] + 0.5) / sy - 0.5
        return res

    # ------------------------------------------------------------------ facenet-pytorch's cascade

    def _facenet(self, x: torch.Tensor) -> list[Detections]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        def run(xb: torch.Tensor) -> list[Detections]:
            boxes, points = detect_face(xb.permute(0, 2, 3, 1), self.min_face, self.pnet, self.rnet, self.onet,
                                        list(self.thresholds), self.factor, self.device)
            out = []
            for b, p in zip(boxes, points):
                # facenet-pytorch 2.5.3 under numpy 2 hands back object arrays: make them numeric
                b = np.asarray(b, dtype=np.float32).reshape(-1, 5)
                p = np.asarray(p, dtype=np.float32).reshape(-1, 5, 2)
                out.append(Detections(np.ascontiguousarray(b[:, :4]), np.ascontiguousarray(b[:, 4]), p))
            return out

        try:
            return run(x)
        except RuntimeError:  # it can fail on odd batches: retry frame by frame
            res = []
            for i in range(len(x)):
                try:
                    res.extend(run(x[i:i + 1]))
                except RuntimeError:
                    res.append(Detections.empty())
            return res

    # ------------------------------------------------------------------ our batched cascade

    def _cascade(self, x: torch.Tensor) -> list[Detections]:
        """MTCNN on [B, 3, h, w] pixels (0..255). Boxes are kept in continuous coordinates
        (pixel i spans [i, i+1)) and converted to pixel-centre coordinates at the end."""
        from torchvision.ops import batched_nms, roi_align

        B, _, h, w = x.shape
        t0, t1, t2 = self.thresholds
        norm = 0.0078125
        # stage 1: PNet over an image pyramid
        scales = []
        s = 12.0 / self.min_face
        side = min(h, w) * s
        while side >= 12:
            scales.append(s)
            s *= self.factor
            side *= self.factor
        cand, cand_img = [], []
        for s in scales:
            hs, ws = int(h * s + 1), int(w * s + 1)
            im = F.interpolate(x, size=(hs, ws), mode="area").sub_(127.5).mul_(norm)
            reg, prob = self.pnet(im)
            b, yy, xx = torch.nonzero(prob[:, 1] >= t0, as_tuple=True)
            if len(b) == 0:
                continue
            score = prob[b, 1, yy, xx]
            off = reg[b, :, yy, xx]  # dx1, dy1, dx2, dy2
            # each PNet cell sees a 12x12 window at stride 2 of the scaled image
            x1 = (2.0 * xx) / s
            y1 = (2.0 * yy) / s
            x2 = (2.0 * xx + 12.0) / s
            y2 = (2.0 * yy + 12.0) / s
            bx = torch.stack([x1, y1, x2, y2], 1).float()
            keep = batched_nms(bx, score, b, 0.5)
            cand.append(torch.cat([bx[keep], score[keep, None], off[keep]], 1))
            cand_img.append(b[keep])
        if not cand:
            return [Detections.empty() for _ in range(B)]
        c = torch.cat(cand)
        img = torch.cat(cand_img)
        keep = batched_nms(c[:, :4], c[:, 4], img, 0.7)
        c, img = c[keep], img[keep]
        boxes = _square(_regress(c[:, :4], c[:, 5:9]))
        # stage 2: RNet on 24x24 windows
        if len(boxes):
            crops = _crops(x, boxes, img, 24, roi_align).sub_(127.5).mul_(norm)
            reg, prob = _batched(self.rnet, crops)
            ok = prob[:, 1] > t1
            boxes, img, reg, score = boxes[ok], img[ok], reg[ok], prob[ok, 1]
            keep = batched_nms(boxes, score, img, 0.7)
            boxes = _square(_regress(boxes[keep], reg[keep]))
            img = img[keep]
        # stage 3: ONet on 48x48 windows, with the five landmarks
        out = [Detections.empty() for _ in range(B)]
        if len(boxes) == 0:
            return out
        crops = _crops(x, boxes, img, 48, roi_align).sub_(127.5).mul_(norm)
        reg, pts, prob = _batched(self.onet, crops)
        ok = prob[:, 1] > t2
        boxes, img, reg, pts, score = boxes[ok], img[ok], reg[ok], pts[ok], prob[ok, 1]
        if len(boxes) == 0:
            return out
        bw = (boxes[:, 2] - boxes[:, 0])[:, None]
        bh = (boxes[:, 3] - boxes[:, 1])[:, None]
        lm = torch.stack([boxes[:, :1] + bw * pts[:, :5], boxes[:, 1:2] + bh * pts[:, 5:]], 2)  # [N, 5, 2]
        boxes = _regress(boxes, reg)
        boxes_np = boxes.float().cpu().numpy() - 0.5  # continuous -> pixel-centre coordinates
        lm_np = lm.float().cpu().numpy() - 0.5
        score_np = score.float().cpu().numpy()
        img_np = img.cpu().numpy()
        for i in range(B):
            sel = np.flatnonzero(img_np == i)
            if len(sel) == 0:
                continue
            k = sel[_nms_min(boxes_np[sel], score_np[sel], 0.7)]
            out[i] = Detections(boxes_np[k].astype(np.float32), score_np[k].astype(np.float32),
                                lm_np[k].astype(np.float32))
        return out


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    wh = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    return boxes + reg * wh


def _square(boxes: torch.Tensor) -> torch.Tensor:
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None]
    return torch.cat([c - side / 2, c + side / 2], 1)


def _crops(x: torch.Tensor, boxes: torch.Tensor, img: torch.Tensor, size: int, roi_align) -> torch.Tensor:
    """Windows `boxes` of images `img` resized to size x size (outside the image: 0)."""
    rois = torch.cat([img[:, None].to(boxes.dtype), boxes], 1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _batched(net: torch.nn.Module, x: torch.Tensor, chunk: int = 2048):
    outs = [net(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return tuple(torch.cat(t) for t in zip(*outs))


def _nms_min(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    """Greedy NMS where overlap = intersection / the smaller area (drops boxes inside others)."""
    order = np.argsort(-scores, kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        ov = inter / np.maximum(np.minimum(area[i], area[rest]), 1e-9)
        order = rest[ov <= thr]
    return np.asarray(keep, np.int64)


# ---------------------------------------------------------------------- choosing the person


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box `a` [4] with boxes `b` [k, 4]."""
    x0 = np.maximum(a[0], b[:, 0])
    y0 = np.maximum(a[1], b[:, 1])
    x1 = np.minimum(a[2], b[:, 2])
    y1 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = max(0.0, float(a[2] - a[0])) * max(0.0, float(a[3] - a[1]))
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


@dataclass
class _Track:
    box: np.ndarray | None = None
    lost: int = 0


@dataclass
class FaceSelector:
    """Online choice of the person(s) of a video, frame by frame.

    Detections scoring below `min_score` are ignored. `policy`: 'largest' (largest face
    of each frame), 'track' (start from the largest face, then follow the face
    overlapping the last one by IoU >= `iou`; after `reset` frames without it,
    re-acquire the largest) or 'left-right' (two tracks: the two largest faces ordered
    by x; a lone face joins the nearer track, or the image half it is in).
    `select(dets, width)` returns one detection index (or -1) per output.
    """

    policy: str = "track"
    iou: float = 0.3
    reset: int = 30
    min_score: float = 0.9  # detections scoring lower are ignored
    second_min_area: float = 0.25  # left-right: a second face must be >= this x the largest
    _tracks: list[_Track] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown face policy {self.policy!r}; expected one of {POLICIES}")
        self._tracks = [_Track() for _ in range(self.n_outputs)]

    @property
    def n_outputs(self) -> int:
        return 2 if self.policy == "left-right" else 1

    def select(self, d: Detections, width: int) -> list[int]:
        """Detection index per output (-1: no face) for one frame, in frame order."""
        keep = np.flatnonzero(d.scores >= self.min_score)
        if len(keep) < len(d):
            sub = Detections(d.boxes[keep], d.scores[keep], d.landmarks[keep])
            return [int(keep[p]) if p >= 0 else -1 for p in self._select(sub, width)]
        return self._select(d, width)

    def _select(self, d: Detections, width: int) -> list[int]:
        if self.policy == "largest":
            return [int(np.argmax(d.areas())) if len(d) else -1]
        if self.policy == "track":
            return [self._track_one(self._tracks[0], d)]
        return self._left_right(d, width)

    def _track_one(self, tr: _Track, d: Detections) -> int:
        pick = -1
        if len(d):
            if tr.box is not None and tr.lost <= self.reset:
                ov = iou(tr.box, d.boxes)
                if ov.max() >= self.iou:
                    pick = int(np.argmax(ov))
            else:
                pick = int(np.argmax(d.areas()))
        if pick >= 0:
            tr.box, tr.lost = d.boxes[pick].copy(), 0
        else:
            tr.lost += 1
        return pick

    def _left_right(self, d: Detections, width: int) -> list[int]:
        left, right = self._tracks
        for tr in (left, right):
            tr.lost += 1
        if not len(d):
            return [-1, -1]
        areas = d.areas()
        order = np.argsort(-areas, kind="stable")
        cand = [int(order[0])]
        if len(order) > 1 and areas[order[1]] >= self.second_min_area * areas[order[0]]:
            cand.append(int(order[1]))
        cx = (d.boxes[:, 0] + d.boxes[:, 2]) / 2
        if len(cand) == 2:
            lo, hi = sorted(cand, key=lambda i: (cx[i], i))
            picks = [lo, hi]
        else:
            i = cand[0]
            dist = []
            for tr in (left, right):
                if tr.box is not None and tr.lost <= self.reset + 1:
                    dist.append(abs(cx[i] - (tr.box[0] + tr.box[2]) / 2))
                else:
                    dist.append(np.inf)
            if np.isfinite(dist).any():
                side = int(np.argmin(dist))
            else:
                side = 0 if cx[i] < width / 2 else 1
            picks = [-1, -1]
            picks[side] = i
        for tr, p in zip((left, right), picks):
            if p >= 0:
                tr.box, tr.lost = d.boxes[p].copy(), 0
        return picks


# ---------------------------------------------------------------------- alignment


def template(size: int = 112) -> np.ndarray:
    """The standard five-point template scaled to a `size` x `size` crop."""
    return TEMPLATE_112 * (size / 112.0)


def similarity_transforms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping each point
    set of `src` [K, P, 2] onto `dst` [P, 2] (Umeyama 1991). Returns [K, 2, 3] float64.
    """
    src = np.asarray(src, np.float64)
    if src.ndim == 2:
        src = src[None]
    dst = np.asarray(dst, np.float64)
    mu_s = src.mean(1, keepdims=True)
    mu_d = dst.mean(0, keepdims=True)
    s0 = src - mu_s
    d0 = dst[None] - mu_d[None]
    cov = np.einsum("kpi,kpj->kij", d0, s0) / src.shape[1]  # [K, 2, 2]
    U, S, Vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(U @ Vt))
    sign[sign == 0] = 1.0
    D = np.zeros((len(src), 2, 2))
    D[:, 0, 0] = 1.0
    D[:, 1, 1] = sign
    R = U @ D @ Vt
    var_s = (s0 ** 2).sum(axis=(1, 2)) / src.shape[1]
    scale = (S * np.stack([np.ones_like(sign), sign], 1)).sum(1) / np.maximum(var_s, 1e-12)
    t = mu_d[0][None] - scale[:, None] * np.einsum("kij,kj->ki", R, mu_s[:, 0])
    M = np.concatenate([scale[:, None, None] * R, t[:, :, None]], axis=2)
    return M


def _invert(M: np.ndarray) -> np.ndarray:
    A = M[:, :, :2]
    Ai = np.linalg.inv(A)
    return np.concatenate([Ai, -np.einsum("kij,kj->ki", Ai, M[:, :, 2])[:, :, None]], axis=2)


def warp_faces(frames: torch.Tensor, index: np.ndarray, landmarks: np.ndarray, size: int = 112,
               antialias: bool = True) -> torch.Tensor:
    """Aligned crops: face k is cut from `frames[index[k]]` ([B, H, W, 3] uint8, any device)
    so that its `landmarks[k]` ([5, 2], frame pixels) land on the template.

    Returns [K, size, size, 3] uint8 on the frames' device. Pixels outside the frame are 0.
    When a face is larger than the crop (scale < 0.75), its region is first downscaled
    with an anti-aliasing filter, so the crop does not alias. Each face's region of the
    frame is copied into one zero-padded canvas, so all faces are sampled in one
    `grid_sample` call (few large ops instead of many small ones per face).
    """
    K = len(index)
    dev = frames.device
    if K == 0:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=dev)
    H, W = int(frames.shape[1]), int(frames.shape[2])
    M = similarity_transforms(np.asarray(landmarks, np.float32), template(size))
    A = _invert(M)  # crop pixel -> frame pixel, [K, 2, 3]
    scale = np.sqrt(np.abs(np.linalg.det(M[:, :, :2])))
    # frame region covering the crop (with a margin for the filter support)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    pts = np.einsum("kij,cj->kci", A, corners)
    x0 = np.clip(np.floor(pts[:, :, 0].min(1)) - 2, 0, W - 1).astype(int)
    y0 = np.clip(np.floor(pts[:, :, 1].min(1)) - 2, 0, H - 1).astype(int)
    x1 = np.maximum(np.clip(np.ceil(pts[:, :, 0].max(1)) + 2, 0, W).astype(int), x0 + 1)
    y1 = np.maximum(np.clip(np.ceil(pts[:, :, 1].max(1)) + 2, 0, H).astype(int), y0 + 1)
    A[:, :, 2] -= np.stack([x0, y0], 1)  # crop pixel -> region pixel
    regions: list[torch.Tensor] = []
    for k in range(K):
        r = frames[int(index[k]), y0[k]:y1[k], x0[k]:x1[k]].permute(2, 0, 1)  # [3, h, w] uint8
        if antialias and scale[k] < 0.75:
            h, w = r.shape[-2:]
            nh, nw = max(1, round(h * scale[k])), max(1, round(w * scale[k]))
            r = F.interpolate(r[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)[0]
            fy, fx = nh / h, nw / w  # region pixel centres: x' + 0.5 = (x + 0.5) * f
            A[k] = np.diag([fx, fy]) @ A[k]
            A[k, :, 2] += (0.5 * fx - 0.5, 0.5 * fy - 0.5)
        regions.append(r)
    hc = max(r.shape[-2] for r in regions)
    wc = max(r.shape[-1] for r in regions)
    canvas = torch.zeros((K, 3, hc, wc), dtype=torch.float32, device=dev)
    for k, r in enumerate(regions):
        canvas[k, :, :r.shape[-2], :r.shape[-1]] = r
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    base = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3)  # [S*S, 3]
    src = np.einsum("pj,kij->kpi", base, A)  # [K, S*S, 2] canvas pixel coordinates
    grid = np.empty_like(src)
    grid[..., 0] = (2 * src[..., 0] + 1) / wc - 1
    grid[..., 1] = (2 * src[..., 1] + 1) / hc - 1
    grid_t = torch.from_numpy(grid.reshape(K, size, size, 2).astype(np.float32)).to(dev, non_blocking=True)
    out = F.grid_sample(canvas, grid_t, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.permute(0, 2, 3, 1).round_().clamp_(0, 255).to(torch.uint8)
