"""Label statistics profiles of `abaw synth` and the latent label processes they drive.

A profile says how the ground truth of one person track unfolds in VIDEO time (expression
runs, AU on/off runs that depend on the expression, VA drifting towards expression targets)
and which video frames carry labels:

- `dense`: every frame with a face is labelled (the generator's original behaviour, kept
  byte for byte: same seed, same output).
- `s-aff-wild2` (the default): the statistics of the real s-Aff-Wild2 validation list
  (ABAW.md, "Real label statistics"): labelled frames sparse with the real gap
  distribution, the real expression distribution, AU base rates and run lengths, a
  log-normal spread of labelled frames per video, EXPR valid on ~58 % of rows.

Profiles live in a registry (`PROFILES`, `get_profile(name)`), like timm's models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from abaw.data.labels import N_AU, N_EXPR
from abaw.registry import Registry

# P(AU active | expression); AU order AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26.
AU_GIVEN_EXPR = np.array([
    [.05, .05, .05, .05, .05, .05, .08, .05, .05, .05, .12, .05],  # Neutral
    [.05, .05, .85, .10, .75, .35, .05, .15, .65, .55, .15, .05],  # Anger
    [.05, .05, .55, .15, .35, .85, .05, .45, .10, .10, .35, .10],  # Disgust
    [.80, .65, .60, .05, .35, .10, .05, .20, .10, .05, .70, .35],  # Fear
    [.05, .05, .03, .85, .25, .35, .92, .03, .03, .03, .60, .25],  # Happiness
    [.70, .10, .60, .05, .15, .05, .03, .75, .10, .25, .10, .05],  # Sadness
    [.85, .80, .05, .05, .05, .05, .10, .05, .05, .05, .85, .70],  # Surprise
    [.20, .20, .20, .20, .20, .20, .20, .20, .20, .20, .25, .15],  # Other
])
# (valence, arousal) each expression pulls towards; Other draws its own per segment.
VA_TARGET = np.array([
    [0.0, -0.25], [-0.6, 0.6], [-0.5, 0.25], [-0.45, 0.6], [0.7, 0.4], [-0.6, -0.35], [0.3, 0.75], [0.0, 0.0],
])

# The real s-Aff-Wild2 validation list (YenanLiu/ABAW7th dataload/val.csv; see ABAW.md).
REAL_EXPR_COUNTS = (1839, 487, 565, 1254, 3731, 1893, 1003, 4591)
REAL_AU_RATES = (0.206, 0.095, 0.204, 0.329, 0.493, 0.425, 0.310, 0.029, 0.028, 0.030, 0.760, 0.109)
REAL_STATS = {
    "gap": {"median": 4, "mean": 8.45, "p90": 17, "max": 543, "share_1": 0.186},
    "frames_per_video": {"min": 11, "median": 370, "max": 4218},
    "expr_runs": {"median": 5, "mean": 13.2},
    "valid": {"va": 1.0, "au": 1.0, "expr": 15363 / 26666},
    "au_rates": list(REAL_AU_RATES),
    "expr_share": [c / sum(REAL_EXPR_COUNTS) for c in REAL_EXPR_COUNTS],
}


@dataclass(frozen=True)
class Durations:
    """Run lengths in video frames: `minimum + Geometric(1/scale)` (law "geometric") or
    `max(minimum, LogNormal(median=scale, sigma=spread))` (law "lognormal")."""

    law: str
    scale: float
    minimum: int
    spread: float = 0.0

    def draw(self, rng: np.random.Generator) -> int:
        if self.law == "geometric":
            return self.minimum + int(rng.geometric(1.0 / self.scale))
        return max(self.minimum, round(self.scale * math.exp(self.spread * rng.standard_normal())))


@dataclass(frozen=True)
class Gaps:
    """Gaps between consecutive labelled frame numbers: 1 with probability `p_one`, else
    `2 + floor(LogNormal(mu, sigma))` (capped), and with probability `p_tail` a long
    log-uniform stretch in `tail` (the face lost or not annotated). Fitted to the real
    median 4, mean 8.45, 90th percentile 17, 18.6 % ones, max several hundred."""

    p_one: float = 0.186
    mu: float = 1.24
    sigma: float = 1.30
    cap: int = 550
    p_tail: float = 0.003
    tail: tuple[int, int] = (40, 550)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` gaps (int64) and which of them are long tail stretches (bool)."""
        z, u, w = rng.standard_normal(n), rng.random(n), rng.random(n)
        g = np.minimum(2 + np.floor(np.exp(self.mu + self.sigma * z)), self.cap).astype(np.int64)
        lo, hi = self.tail
        tail = u > 1 - self.p_tail
        g[tail] = np.floor(lo * np.exp(w[tail] * math.log(hi / lo))).astype(np.int64)
        one = u < self.p_one
        g[one] = 1
        return g, tail & ~one


@dataclass(frozen=True)
class Validity:
    """Alternating valid / invalid stretches of one task's labels in video time."""

    share: float = 1.0  # expected share of valid frames
    median: float = 600.0  # median length of a valid stretch, video frames
    spread: float = 1.0  # log-normal sigma of stretch lengths

    def mask(self, rng: np.random.Generator, T: int) -> np.ndarray:
        ok = np.ones(T, bool)
        if self.share >= 1.0:
            return ok
        bad_median = self.median * (1 - self.share) / self.share
        state = rng.random() < self.share
        t = -int(rng.integers(0, int(self.median) + 1))  # start inside a stretch
        while t < T:
            L = max(1, round((self.median if state else bad_median) * math.exp(self.spread * rng.standard_normal())))
            if not state:
                ok[max(0, t):max(0, t + L)] = False
            t += L
            state = not state
        return ok


@dataclass(frozen=True)
class Profile:
    """How labels unfold in video time and which frames carry them."""

    name: str
    p_expr: tuple[float, ...]
    au_given_expr: tuple[tuple[float, ...], ...]
    expr_runs: Durations
    au_runs: Durations
    va_rate: float  # per-frame pull of VA towards the expression's target
    va_periods: tuple[float, float]  # range of the periods of the slow VA drift, frames
    frames: tuple[int, int]  # default (min_frames, max_frames)
    sparse: bool = False  # labelled frames are a sparse subset of the video frames
    gaps: Gaps = field(default_factory=Gaps)
    expr_valid: Validity = field(default_factory=Validity)  # (sparse) validity of EXPR labels
    train_valid: Validity = field(default_factory=Validity)  # (sparse) validity of VA/AU in train
    median_at: float = 0.59  # (sparse) median labelled frames per track, as a position in log[min, max]
    sigma_of_range: float = 4.8  # (sparse) log(max/min) / sigma of labelled frames per track


PROFILES: Registry[Callable[[], Profile]] = Registry("synth profile")


def get_profile(name: str) -> Profile:
    """The profile registered as `name` (an AbawError names the known ones)."""
    return PROFILES.get(name)()


def calibrate_au(table: np.ndarray, p_expr: np.ndarray, rates: tuple[float, ...]) -> np.ndarray:
    """Shift each AU column of P(AU | expression) on the logit scale so that its marginal under
    `p_expr` equals `rates`, keeping which expressions raise which AU."""
    logit = np.log(table) - np.log1p(-table)
    out = np.empty_like(table)
    for k, target in enumerate(rates):
        lo, hi = -20.0, 20.0
        for _ in range(60):
            b = (lo + hi) / 2
            if p_expr @ (1 / (1 + np.exp(-(logit[:, k] + b)))) < target:
                lo = b
            else:
                hi = b
        out[:, k] = 1 / (1 + np.exp(-(logit[:, k] + (lo + hi) / 2)))
    return out


@PROFILES.register("dense")
def dense() -> Profile:
    """Every face frame labelled; expressions hold ~50 frames, AUs ~28 (the original synth)."""
    return Profile(
        name="dense",
        p_expr=(0.14, 0.05, 0.05, 0.08, 0.22, 0.12, 0.09, 0.25),
        au_given_expr=tuple(map(tuple, AU_GIVEN_EXPR)),
        expr_runs=Durations("geometric", 35, 15),
        au_runs=Durations("geometric", 22, 6),
        va_rate=0.08,
        va_periods=(60, 300),
        frames=(100, 200),
    )


@PROFILES.register("s-aff-wild2")
def s_aff_wild2() -> Profile:
    """The real s-Aff-Wild2 validation statistics (see REAL_STATS)."""
    p = np.array(REAL_EXPR_COUNTS, float) / sum(REAL_EXPR_COUNTS)
    return Profile(
        name="s-aff-wild2",
        p_expr=tuple(p.tolist()),
        au_given_expr=tuple(map(tuple, calibrate_au(AU_GIVEN_EXPR, p, REAL_AU_RATES))),
        # expression segments: median ~5, mean ~13 labelled frames at the real gaps
        expr_runs=Durations("lognormal", 15, 3, spread=1.7),
        au_runs=Durations("lognormal", 40, 3, spread=1.0),
        va_rate=0.02,
        va_periods=(240, 1200),
        frames=(2, 100),
        sparse=True,
        expr_valid=Validity(share=15363 / 26666, median=700, spread=1.0),
        train_valid=Validity(share=0.97, median=3000, spread=1.0),
    )


def latent_track(rng: np.random.Generator, T: int, profile: Profile | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth ground truth for one person over T video frames: VA [T,2], EXPR [T], AU [T,12]."""
    prof = profile or dense()
    p_expr = np.array(prof.p_expr)
    au_given = np.array(prof.au_given_expr)
    expr = np.empty(T, dtype=np.int64)
    target = np.empty((T, 2), dtype=np.float64)
    runs, t = [], 0
    while t < T:  # all run lengths first, then their classes (the original draw order)
        L = prof.expr_runs.draw(rng)
        runs.append((t, min(T, t + L)))
        t += L
    for s, e in runs:
        c = int(rng.choice(N_EXPR, p=p_expr))
        expr[s:e] = c
        target[s:e] = VA_TARGET[c] if c != 7 else rng.uniform(-0.35, 0.35, size=2)
    change = np.flatnonzero(np.diff(expr)) + 1
    au = np.zeros((T, N_AU), dtype=np.int8)
    for k in range(N_AU):
        t = 0
        while t < T:
            end = min(T, t + prof.au_runs.draw(rng))
            cut = change[(change > t) & (change < end)]
            if len(cut):
                end = int(cut[0])
            au[t:end, k] = rng.random() < au_given[expr[t], k]
            t = end
    # VA: exponential approach to the expression target + slow drift + a personal offset
    va = np.empty((T, 2))
    state = target[0].copy()
    for t in range(T):
        state += prof.va_rate * (target[t] - state)
        va[t] = state
    tt = np.arange(T)
    lo, hi = prof.va_periods
    for j in range(2):
        for _ in range(3):
            period = rng.uniform(lo, hi)
            va[:, j] += 0.12 * np.sin(2 * np.pi * tt / period + rng.uniform(0, 2 * np.pi))
        va[:, j] += rng.normal(0, 0.08)
    return np.clip(va, -0.98, 0.98).astype(np.float32), expr, au


def track_sizes(rng: np.random.Generator, n: int, lo: int, hi: int, prof: Profile) -> list[int]:
    """Labelled frames of `n` tracks: the real log-normal shape between `lo` and `hi`, drawn
    stratified (one per quantile band, shuffled) so that small splits keep the spread."""
    a, b = math.log(max(1, lo)), math.log(max(1, hi))
    mu = a + prof.median_at * (b - a)
    sigma = (b - a) / prof.sigma_of_range
    q = (rng.permutation(n) + rng.random(n)) / n
    inv = NormalDist().inv_cdf
    return [int(np.clip(round(math.exp(mu + sigma * inv(min(max(x, 1e-9), 1 - 1e-9)))), lo, hi)) for x in q]


def labelled_frames(rng: np.random.Generator, n: int, prof: Profile) -> tuple[np.ndarray, np.ndarray]:
    """0-based positions of `n` labelled frames in video time, and the (start, end) stretches
    inside long gaps where the face is lost (int64 [k, 2], end exclusive)."""
    gaps, tail = prof.gaps.draw(rng, max(0, n - 1))
    pos = int(rng.integers(0, 30)) + np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)
    lost = []
    for i in np.flatnonzero(tail | (gaps >= 40)):
        if tail[i] or rng.random() < 0.5:
            g = int(gaps[i])
            a = int(rng.integers(1, max(2, g // 4)))
            b = int(rng.integers(1, max(2, g // 4)))
            lost.append((int(pos[i]) + a, int(pos[i + 1]) - b))
    return pos, np.array(lost, dtype=np.int64).reshape(-1, 2)
