"""Video decoding, face detection on real photos, person selection and 5-point alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from abaw.data.face_render import TEMPLATE_112, Identity, render_face
from abaw.extract.faces import Detections, FaceDetector, FaceSelector, iou, similarity_transforms, warp_faces
from abaw.extract.video import VideoError, count_frames, iter_frames, probe
from tests.conftest import REAL_FACES

needs_real = pytest.mark.skipif(not REAL_FACES.exists(), reason="real face data not available")


@needs_real
def test_decode_counts_decoded_frames_not_header():
    counts = {"single_face.mp4": 72, "face_noface.mov": 169, "no_face.mp4": 95}
    assert probe(REAL_FACES / "no_face.mp4").header_frames == 98  # the header over-counts
    for name, n in counts.items():
        chunks = list(iter_frames(REAL_FACES / name, chunk=32))
        frame = np.concatenate([c.frame for c in chunks])
        ts = np.concatenate([c.timestamp for c in chunks])
        assert frame.tolist() == list(range(1, n + 1)), name
        assert (np.diff(ts) > 0).all() and ts[0] == 0.0
        assert [len(c.frame) for c in chunks][:-1] == [32] * (len(chunks) - 1)
        assert chunks[0].rgb.dtype == np.uint8 and chunks[0].rgb.shape[-1] == 3
        assert count_frames(REAL_FACES / name) == n


def test_decode_errors_name_the_file(tmp_path):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="noise.mp4: cannot open video"):
        list(iter_frames(bad))
    with pytest.raises(VideoError, match="missing.mp4"):
        probe(tmp_path / "missing.mp4")


def _face(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(render_face(Identity.sample(rng), np.zeros(12), 0.0, 0.0, 0, 1.0, rng, pixel_noise=0, jitter=0))


@pytest.mark.parametrize("scale,angle", [(2.5, 12.0), (1.0, -6.0), (0.7, 3.0)])
def test_alignment_undoes_a_known_similarity(scale, angle):
    """Place an aligned face into a big frame with a known similarity; aligning with the
    transformed template points must give the face back (the large case uses the
    anti-aliased path)."""
    face = _face()
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    A = scale * np.array([[c, -s], [s, c]])
    t = np.array([310.0, 170.0])
    fwd = np.vstack([np.c_[A, t], [0, 0, 1]])
    inv = np.linalg.inv(fwd)
    # PIL maps output pixel centres (x+.5) to input; express the inverse in that convention
    big = Image.fromarray(face).transform((640, 480), Image.AFFINE, data=tuple(inv[:2].ravel()),
                                          resample=Image.BICUBIC)
    lm = TEMPLATE_112 @ A.T + t
    M = similarity_transforms(lm[None], TEMPLATE_112)[0]
    np.testing.assert_allclose(M[:, :2] @ A, np.eye(2), atol=1e-6)
    crop = warp_faces(torch.from_numpy(np.array(big))[None], np.array([0]), lm[None], 112)[0].numpy()
    err = np.abs(crop.astype(float) - face).mean()
    shifted = np.abs(np.roll(face, 3, axis=1).astype(float) - face).mean()
    assert err < 0.5 * shifted, (err, shifted)
    # any crop size: the template scales with it
    crop224 = warp_faces(torch.from_numpy(np.array(big))[None], np.array([0]), lm[None], 224)[0].numpy()
    assert crop224.shape == (224, 224, 3)


def _dets(*boxes, scores=None):
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    sc = np.ones(len(b), np.float32) if scores is None else np.asarray(scores, np.float32)
    lm = np.zeros((len(b), 5, 2), np.float32)
    return Detections(b, sc, lm)


BIG_L = (10, 10, 110, 110)
SMALL_R = (200, 20, 260, 80)


def test_selection_policies():
    assert FaceSelector("largest").select(_dets(SMALL_R, BIG_L), 320) == [1]
    assert FaceSelector("largest").select(_dets(), 320) == [-1]
    # track: follows the first largest face, does not jump to the other one while it is lost
    tr = FaceSelector("track", reset=3)
    assert tr.select(_dets(BIG_L, SMALL_R), 320) == [0]
    moved = (14, 12, 114, 112)
    assert tr.select(_dets(SMALL_R, moved), 320) == [1]
    assert [tr.select(_dets(SMALL_R), 320) for _ in range(4)] == [[-1]] * 4
    assert tr.select(_dets(SMALL_R), 320) == [0]  # lost for longer than `reset`: re-acquire
    # low scores are ignored
    assert FaceSelector("largest", min_score=0.9).select(_dets(BIG_L, SMALL_R, scores=[0.5, 0.99]), 320) == [1]
    # left-right: the two largest ordered by x; a lone face joins the nearer track
    lr = FaceSelector("left-right")
    assert lr.select(_dets(SMALL_R, BIG_L), 320) == [1, 0]
    assert lr.select(_dets((205, 22, 262, 82)), 320) == [-1, 0]
    assert lr.select(_dets((8, 10, 108, 110)), 320) == [0, -1]
    fresh = FaceSelector("left-right")
    assert fresh.select(_dets(SMALL_R), 320) == [-1, 0]  # no history: by image half
    with pytest.raises(ValueError):
        FaceSelector("everyone")


@needs_real
def test_mtcnn_finds_real_faces():
    det = FaceDetector("cpu", detect_size=400)
    ref = FaceDetector("cpu", detect_size=400, impl="facenet")
    for name, n in [("single_face.jpg", 1), ("multi_face.jpg", 5)]:
        img = torch.from_numpy(np.array(Image.open(REAL_FACES / name).convert("RGB")))[None]
        d = det(img)[0]
        assert len(d) == n, name
        assert d.landmarks.shape == (n, 5, 2) and (d.scores > 0.9).all()
        # landmarks inside their boxes, eyes above the mouth
        b = d.boxes
        assert ((d.landmarks[..., 0] > b[:, None, 0]) & (d.landmarks[..., 0] < b[:, None, 2])).all()
        assert (d.landmarks[:, :2, 1].max(1) < d.landmarks[:, 3:, 1].min(1)).all()
        # our batched cascade finds the same faces as facenet-pytorch's
        r = ref(img)[0]
        assert len(r) == n
        assert all(iou(bx, r.boxes).max() > 0.8 for bx in d.boxes)
