"""The ABAW MTL metric: P_MTL = P_VA + P_EXPR + P_AU, each on its task's valid frames.

- P_VA   = (CCC(valence) + CCC(arousal)) / 2, CCC with population moments.
- P_EXPR = macro F1 over all 8 expression classes. A class absent from both truth and
           prediction scores 0 and is still averaged (never silently dropped, unlike
           scikit-learn's default which averages only over the classes it sees).
- P_AU   = mean over the 12 AUs of each AU's binary F1 (positive class 1).

Undefined quantities are 0 (F1 with no positives predicted or present; CCC when both
series are constant). A VA dimension predicted as NaN on every frame (a run that trained
valence only, `--tasks au,v`) is not scored: its CCC is None and P_VA is the CCC of the
dimension predicted; the score is then `partial` (the ABAW P_VA needs both).
A task with no valid frame gets score None and is left out of the
total, which lists the tasks it sums.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from abaw.data.labels import AU_NAMES, EXPR_NAMES, N_AU, N_EXPR


CCC_EPS = 1e-12


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation coefficient (population moments); 0 if undefined."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"ccc: shapes differ {x.shape} vs {y.shape}")
    if x.size == 0:
        return 0.0
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    den = vx + vy + (mx - my) ** 2
    if den <= CCC_EPS:  # both (numerically) constant and equal: undefined
        return 0.0
    return float(2.0 * cov / den)


def binary_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (1); 0 when there is no positive in truth or prediction."""
    t = np.asarray(y_true).astype(bool).ravel()
    p = np.asarray(y_pred).astype(bool).ravel()
    tp = np.count_nonzero(t & p)
    den = np.count_nonzero(t) + np.count_nonzero(p)
    return 0.0 if den == 0 else float(2.0 * tp / den)


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_EXPR) -> np.ndarray:
    """One-vs-rest F1 of each class 0..n_classes-1 (0 where undefined)."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"f1: shapes differ {t.shape} vs {p.shape}")
    if t.size and (t.min() < 0 or t.max() >= n_classes or p.min() < 0 or p.max() >= n_classes):
        raise ValueError(f"f1: labels must be in 0..{n_classes - 1}")
    cm = confusion_matrix(t, p, n_classes)
    tp = np.diag(cm).astype(np.float64)
    den = cm.sum(0) + cm.sum(1)
    return np.divide(2 * tp, den, out=np.zeros(n_classes), where=den > 0)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = N_EXPR) -> np.ndarray:
    """Counts [true class, predicted class]."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def expr_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """P_EXPR: macro F1 over the 8 classes."""
    return float(per_class_f1(y_true, y_pred, N_EXPR).mean())


def per_au_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Binary F1 of each AU column."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"au f1: expected equal [N, K] shapes, got {t.shape} vs {p.shape}")
    tp = (t & p).sum(0).astype(np.float64)
    den = t.sum(0) + p.sum(0)
    return np.divide(2 * tp, den, out=np.zeros(t.shape[1]), where=den > 0)


def au_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """P_AU: mean binary F1 over the AUs."""
    return float(per_au_f1(y_true, y_pred).mean())


@dataclass(frozen=True)
class MTLScore:
    """All numbers of the MTL metric. Task scores are None when the task had no valid frame."""

    va: float | None
    valence: float | None
    arousal: float | None
    expr: float | None
    au: float | None
    expr_per_class: tuple[float, ...] | None
    au_per_au: tuple[float, ...] | None
    n_va: int
    n_expr: int
    n_au: int

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks that were scored (had at least one valid frame)."""
        return tuple(t for t in ("va", "expr", "au") if getattr(self, t) is not None)

    @property
    def partial(self) -> bool:
        """VA scored on one dimension only (the other was not predicted)."""
        return self.va is not None and (self.valence is None or self.arousal is None)

    @property
    def va_label(self) -> str:
        """`VA`, or `V` / `A` when only valence / arousal was scored."""
        if not self.partial:
            return "VA"
        return "V" if self.arousal is None else "A"

    @property
    def total(self) -> float:
        """P_MTL over the scored tasks."""
        return float(sum(getattr(self, t) for t in self.tasks))

    def summary(self) -> dict:
        """The headline numbers (what run folders record per epoch and per post-processing step)."""
        return {"total": self.total, "va": self.va, "valence": self.valence, "arousal": self.arousal,
                "expr": self.expr, "au": self.au, "tasks": list(self.tasks)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        d["tasks"] = list(self.tasks)
        if self.expr_per_class is not None:
            d["expr_per_class"] = dict(zip(EXPR_NAMES, self.expr_per_class))
        if self.au_per_au is not None:
            d["au_per_au"] = dict(zip(AU_NAMES, self.au_per_au))
        return d

    def format(self) -> str:
        """The score as a table (what `abaw evaluate` prints)."""
        return self.format_table()

    def format_table(self) -> str:
        """Human-readable per-task table with per-AU and per-class F1."""

        def f(x: float | None) -> str:
            return "   n/a" if x is None else f"{x:6.4f}"

        names = [self.va_label if t == "va" else t.upper() for t in self.tasks]
        partial = (f"  partial: VA scored on {'valence' if self.arousal is None else 'arousal'} only"
                   if self.partial else "")
        lines = [
            f"{'task':<10}{'score':>8}{'frames':>9}",
            f"{'VA':<10}{f(self.va):>8}{self.n_va:>9}    valence {f(self.valence)}  arousal {f(self.arousal)}",
            f"{'EXPR':<10}{f(self.expr):>8}{self.n_expr:>9}",
            f"{'AU':<10}{f(self.au):>8}{self.n_au:>9}",
            f"{'P_MTL':<10}{self.total:8.4f}     ({' + '.join(names) or 'no task'})" + partial,
        ]
        if self.expr_per_class is not None:
            lines.append("EXPR F1 per class: " + "  ".join(
                f"{n} {v:.3f}" for n, v in zip(EXPR_NAMES, self.expr_per_class)))
        if self.au_per_au is not None:
            lines.append("AU F1 per AU:      " + "  ".join(
                f"{n} {v:.3f}" for n, v in zip(AU_NAMES, self.au_per_au)))
        return "\n".join(lines)


def mtl_score(
    va_pred: np.ndarray | None = None, va_true: np.ndarray | None = None, va_mask: np.ndarray | None = None,
    expr_pred: np.ndarray | None = None, expr_true: np.ndarray | None = None, expr_mask: np.ndarray | None = None,
    au_pred: np.ndarray | None = None, au_true: np.ndarray | None = None, au_mask: np.ndarray | None = None,
) -> MTLScore:
    """Score each task on its valid frames (mask True = valid). Tasks given as None are skipped."""
    va = valence = arousal = None
    n_va = 0
    if va_pred is not None and va_true is not None:
        m = np.ones(len(va_true), bool) if va_mask is None else np.asarray(va_mask, bool)
        n_va = int(m.sum())
        if n_va:
            vp, vt = np.asarray(va_pred)[m], np.asarray(va_true)[m]
            valence, arousal = (None if np.isnan(vp[:, d]).all() else ccc(vp[:, d], vt[:, d]) for d in (0, 1))
            dims = [x for x in (valence, arousal) if x is not None]
            va = float(np.mean(dims)) if dims else None
    ex = per_cls = None
    n_ex = 0
    if expr_pred is not None and expr_true is not None:
        m = np.ones(len(expr_true), bool) if expr_mask is None else np.asarray(expr_mask, bool)
        n_ex = int(m.sum())
        if n_ex:
            pc = per_class_f1(np.asarray(expr_true)[m], np.asarray(expr_pred)[m], N_EXPR)
            ex, per_cls = float(pc.mean()), tuple(float(x) for x in pc)
    au = per_au = None
    n_au = 0
    if au_pred is not None and au_true is not None:
        m = np.ones(len(au_true), bool) if au_mask is None else np.asarray(au_mask, bool)
        n_au = int(m.sum())
        if n_au:
            pa = per_au_f1(np.asarray(au_true)[m], np.asarray(au_pred)[m])
            if pa.shape[0] != N_AU:
                raise ValueError(f"expected {N_AU} AUs, got {pa.shape[0]}")
            au, per_au = float(pa.mean()), tuple(float(x) for x in pa)
    return MTLScore(va, valence, arousal, ex, au, per_cls, per_au, n_va, n_ex, n_au)


def score_annotations(pred, ann) -> MTLScore:
    """Score `Predictions` against `Annotations` (every annotated image must be predicted)."""
    from abaw.errors import AbawError

    idx = pred.index()
    names = ann.images()
    rows = np.fromiter((idx.get(n, -1) for n in names), dtype=np.int64, count=len(names))
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        ex = ", ".join(names[i] for i in missing[:5])
        raise AbawError(
            f"{len(missing)} of {len(names)} annotated frames have no prediction (e.g. {ex})"
        )
    return mtl_score(
        pred.va[rows], ann.va, ann.va_valid,
        pred.expr[rows], ann.expr, ann.expr_valid,
        pred.au[rows], ann.au, ann.au_valid,
    )
