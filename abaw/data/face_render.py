"""Parametric face renderer used by `abaw synth`.

Draws a frontal face whose geometry follows the ABAW labels: brows (AU1 inner raise, AU2
outer raise, AU4 lowerer), cheeks (AU6), lids (AU7, arousal), upper lip (AU10), lip
corners (AU12 up, AU15 down, valence), lips (AU23 tightener, AU24 pressor, AU25 parted),
jaw (AU26) and a skin tint per expression. Facial points sit on the standard 112x112
five-point alignment template (eyes, nose tip, mouth corners), so a detector + aligner
applied to a video of these faces recovers the aligned crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Standard 112x112 five-point template (left eye, right eye, nose, mouth left, mouth right).
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)

SKIN_TONES = [(241, 194, 167), (224, 172, 137), (198, 140, 104), (160, 104, 72), (140, 94, 66), (235, 205, 180)]
HAIR_COLOURS = [(30, 22, 18), (70, 45, 25), (120, 80, 40), (200, 170, 110), (90, 90, 90), (20, 20, 20)]
# Skin tint per expression: Neutral, Anger, Disgust, Fear, Happiness, Sadness, Surprise, Other.
EXPR_TINT = [
    (0, 0, 0), (200, 30, 30), (90, 150, 40), (170, 170, 230), (250, 200, 60),
    (70, 90, 160), (250, 250, 250), (160, 60, 170),
]
S = 2  # draw at 2x and downsample (anti-aliasing)


@dataclass(frozen=True)
class Identity:
    """Per-person appearance that stays fixed within a video."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    background: tuple[int, int, int]
    face_width: float  # relative, ~1
    brow_thickness: float

    @staticmethod
    def sample(rng: np.random.Generator, background: tuple[int, int, int] | None = None) -> Identity:
        skin = SKIN_TONES[rng.integers(len(SKIN_TONES))]
        skin = tuple(int(np.clip(c + rng.integers(-8, 9), 0, 255)) for c in skin)
        while background is None or sum(abs(b - s) for b, s in zip(background, skin)) < 150:
            grey = float(rng.uniform(60, 200))
            background = tuple(int(np.clip(grey + rng.normal(0, 25), 0, 255)) for _ in range(3))
        return Identity(
            skin=skin,  # type: ignore[arg-type]
            hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
            background=background,
            face_width=float(rng.uniform(0.92, 1.08)),
            brow_thickness=float(rng.uniform(0.8, 1.25)),
        )


def _blend(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    t = float(np.clip(t, 0.0, 1.0))
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def render_face(
    ident: Identity,
    au: np.ndarray,
    valence: float,
    arousal: float,
    expr: int,
    expr_strength: float,
    rng: np.random.Generator,
    pixel_noise: float = 4.0,
    jitter: float = 1.0,
    fast: bool = False,
) -> Image.Image:
    """Render one 112x112 aligned face. `au` holds 12 intensities in [0, 1].

    `fast`: halve first (box filter), then rotate and add float32 noise at 112 px, ~1.7x
    faster than rotating at 224 px and Lanczos-resizing (for clips with many frames)."""
    a = np.clip(np.asarray(au, dtype=np.float64), 0.0, 1.0)
    a1, a2, a4, a6, a7, a10, a12, a15, a23, a24, a25, a26 = a
    v = float(np.clip(valence, -1, 1))
    ar = float(np.clip(arousal, -1, 1))
    W = 112 * S
    img = Image.new("RGB", (W, W), ident.background)
    d = ImageDraw.Draw(img)
    # soft background gradient
    for y in range(0, W, 8):
        d.rectangle([0, y, W, y + 8], fill=_blend(ident.background, (255, 255, 255), 0.12 * y / W))

    def P(x: float, y: float) -> tuple[float, float]:
        return (x * S, y * S)

    cx = 56.0
    fw = 34.0 * ident.face_width
    skin = _blend(ident.skin, EXPR_TINT[expr], 0.38 * expr_strength) if expr != 0 else ident.skin
    shade = _blend(skin, (0, 0, 0), 0.18)
    # neck and hair behind the head
    d.rectangle([*P(cx - 14, 95), *P(cx + 14, 112)], fill=shade)
    d.ellipse([*P(cx - fw - 5, 6), *P(cx + fw + 5, 70)], fill=ident.hair)
    chin = 106 + 4 * a26
    d.ellipse([*P(cx - fw - 4, 44), *P(cx - fw + 4, 64)], fill=shade)  # ears
    d.ellipse([*P(cx + fw - 4, 44), *P(cx + fw + 4, 64)], fill=shade)
    d.ellipse([*P(cx - fw, 16), *P(cx + fw, chin)], fill=skin)
    d.chord([*P(cx - fw, 10), *P(cx + fw, 50)], 180, 360, fill=ident.hair)  # fringe

    # cheeks (AU6) and a general flush with arousal
    if a6 > 0.02:
        cheek = _blend(skin, (225, 90, 100), 0.55 * a6)
        for ex in (38.3, 73.5):
            d.ellipse([*P(ex - 9, 60 - 3 * a6), *P(ex + 9, 70 - 3 * a6)], fill=cheek)

    # eyes: openness from arousal, narrowed by AU7 (lid tightener) and AU6
    open_ = 3.6 * (0.75 + 0.25 * ar) * (1 - 0.3 * a7) * (1 - 0.15 * a6) + 0.5 * (a1 + a2)
    socket = _blend(skin, (0, 0, 0), 0.22)
    lid = _blend(ident.hair, (0, 0, 0), 0.5)
    for ex, ey in ((38.29, 51.70), (73.53, 51.50)):
        d.ellipse([*P(ex - 9.5, ey - 6.5), *P(ex + 9.5, ey + 5.5)], fill=socket)
        d.ellipse([*P(ex - 7.5, ey - open_), *P(ex + 7.5, ey + open_)], fill=(245, 245, 245))
        r = min(3.4, open_)
        d.ellipse([*P(ex - r, ey - r), *P(ex + r, ey + r)], fill=(45, 30, 20))
        d.arc([*P(ex - 7.5, ey - open_), *P(ex + 7.5, ey + open_)], 180, 360, fill=lid, width=int(1.5 * S))
        if a7 > 0.15:  # tightened lower lid
            d.line([*P(ex - 7, ey + open_ * 0.8), *P(ex + 7, ey + open_ * 0.8)],
                   fill=_blend(skin, (40, 20, 15), 0.7 * a7), width=2 * S)

    # brows: AU1 raises inner ends, AU2 outer ends, AU4 lowers and pulls together
    bw = max(1, int(round(2.2 * ident.brow_thickness * (1 + 0.6 * a4) * S)))
    brow_col = _blend(ident.hair, (0, 0, 0), 0.3)
    for side, ex in ((-1, 38.29), (1, 73.53)):  # side -1 = image-left eye
        inner_x = ex - side * (7.0 - 2.0 * a4)  # AU4 pulls the inner ends together
        outer_x = ex + side * 8.0
        base = 42.5 - 0.8 * ar
        inner_y = base - 5.0 * a1 + 3.5 * a4
        outer_y = base - 5.0 * a2 + 1.0 * a4 + 1.0
        mid = ((inner_x + outer_x) / 2, (inner_y + outer_y) / 2 - 1.5)
        d.line([*P(outer_x, outer_y), *P(*mid), *P(inner_x, inner_y)], fill=brow_col, width=bw, joint="curve")
    if a4 > 0.3:  # glabella furrows
        for dx in (-1.5, 1.5):
            d.line([*P(cx + dx, 44), *P(cx + dx * 0.6, 50)], fill=_blend(skin, (0, 0, 0), 0.35 * a4), width=S)

    # forehead wrinkles: AU1 across the middle, AU2 at the sides
    wrinkle = _blend(skin, (60, 30, 20), 0.5)
    for k in range(3):
        y = 34.0 - 3.2 * k
        if a1 > 0.15:
            d.line([*P(cx - 9, y), *P(cx + 9, y)], fill=_blend(skin, wrinkle, a1), width=S)
        if a2 > 0.15:
            for side in (-1, 1):
                d.line([*P(cx + side * 13, y + 1), *P(cx + side * 25, y + 2.5)], fill=_blend(skin, wrinkle, a2), width=S)
    # nasolabial folds deepen with AU12 (smile) and AU10
    fold = max(a12, 0.6 * a10)
    if fold > 0.15:
        for side in (-1, 1):
            pts = [P(cx + side * 8, 71), P(cx + side * 15, 79), P(cx + side * 17, 92)]
            d.line([c for pt in pts for c in pt], fill=_blend(skin, (70, 35, 25), 0.6 * fold),
                   width=int(1.5 * S), joint="curve")
    # chin boss / depressor shadow (AU15) and pressed-lip bulge (AU24)
    if a15 > 0.15:
        d.ellipse([*P(cx - 8, 99), *P(cx + 8, 104)], fill=_blend(skin, (50, 30, 25), 0.45 * a15))
        for side in (-1, 1):
            d.line([*P(cx + side * 15, 94), *P(cx + side * 18, 100)], fill=_blend(skin, (50, 30, 25), 0.5 * a15), width=S)

    # nose: bridge, tip, nostrils; AU10 adds wrinkles on the bridge
    d.line([*P(cx, 52), *P(cx - 1.5, 70)], fill=shade, width=S)
    d.ellipse([*P(cx - 5, 70), *P(cx - 1.5, 73.5)], fill=_blend(skin, (0, 0, 0), 0.45))
    d.ellipse([*P(cx + 1.5, 70), *P(cx + 5, 73.5)], fill=_blend(skin, (0, 0, 0), 0.45))
    if a10 > 0.3:
        for y in (56, 59):
            d.line([*P(cx - 4, y), *P(cx + 4, y)], fill=_blend(skin, (0, 0, 0), 0.3 * a10), width=S)

    # mouth
    width_scale = 1.0 - 0.18 * a23 + 0.08 * a12
    lx = cx - (cx - 41.55) * width_scale
    rx = cx + (70.73 - cx) * width_scale
    corner_y = 92.3 - 4.5 * a12 + 4.0 * a15 - 2.5 * v
    upper_y = 88.6 - 2.5 * a10
    opening = max(0.0, 4.5 * a25 + 7.0 * a26 - 3.5 * a24) * (1 if a25 + a26 > 0.1 else 0)
    lip = 3.0 * (1.0 - 0.5 * max(a23, a24))
    lip_col = _blend(skin, (150, 35, 50), 0.75)
    centre_lower = 92.6 + opening
    # upper lip
    d.polygon([P(lx, corner_y), P(cx - 6, upper_y - lip * 0.4), P(cx, upper_y + 0.4),
               P(cx + 6, upper_y - lip * 0.4), P(rx, corner_y), P(cx, upper_y + lip)], fill=lip_col)
    if opening > 0.5:
        d.polygon([P(lx + 1, corner_y), P(cx, upper_y + lip), P(rx - 1, corner_y), P(cx, centre_lower)],
                  fill=(60, 15, 20))
        if opening > 3:
            d.rectangle([*P(cx - 7, upper_y + lip), *P(cx + 7, upper_y + lip + 1.6)], fill=(240, 240, 235))
    # lower lip
    d.polygon([P(lx, corner_y), P(cx, centre_lower), P(rx, corner_y), P(cx, centre_lower + lip * 1.1)],
              fill=_blend(lip_col, (0, 0, 0), 0.1))
    if a24 > 0.15:
        d.line([*P(lx - 2, corner_y), *P(rx + 2, corner_y)], fill=_blend(lip_col, (0, 0, 0), 0.7 * a24), width=2 * S)

    # nuisance: small rotation / shift, blur, noise
    scale = 1 if fast else S  # the resolution the rotation runs at
    if fast:
        img = img.reduce(S)
    if jitter > 0:
        ang = float(rng.normal(0, 2.0 * jitter))
        tx, ty = rng.normal(0, 1.0 * jitter, size=2) * scale
        img = img.rotate(ang, resample=Image.BILINEAR, translate=(float(tx), float(ty)), fillcolor=ident.background)
    if not fast:
        img = img.resize((112, 112), Image.LANCZOS)
    img = img.filter(ImageFilter.GaussianBlur(0.4))
    if pixel_noise > 0:
        arr = np.asarray(img, dtype=np.float32)
        if fast:
            arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(pixel_noise)
        else:
            arr += rng.normal(0, pixel_noise, size=arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img
