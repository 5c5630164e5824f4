"""The official MTL metric: hand-computed cases, edge cases, and property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import f1_score

from abaw.metrics import au_f1, binary_f1, ccc, confusion_matrix, expr_f1, mtl_score, per_au_f1, per_class_f1


def ccc_reference(x, y):
    """Straight from the definition, with explicit sums."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    vx = sum((a - mx) ** 2 for a in x) / n
    vy = sum((b - my) ** 2 for b in y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y)) / n
    den = vx + vy + (mx - my) ** 2
    return 0.0 if den <= 1e-12 else 2 * cov / den


def test_ccc_hand_computed():
    # x = [1,2,3], y = [2,4,6]: mx=2, my=4, vx=2/3, vy=8/3, cov=4/3 -> 2*(4/3)/(2/3+8/3+4) = 8/22
    assert ccc([1, 2, 3], [2, 4, 6]) == pytest.approx(8 / 22)
    assert ccc([0.1, 0.5, -0.3], [0.1, 0.5, -0.3]) == pytest.approx(1.0)
    assert ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_ccc_constant_predictions():
    y = np.array([0.1, 0.4, -0.2, 0.3])
    assert ccc(np.full(4, 0.5), y) == 0.0  # no covariance
    assert ccc(np.full(4, 0.2), np.full(4, 0.2)) == 0.0  # undefined -> 0
    assert ccc([], []) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 40).flatmap(lambda n: st.tuples(
    arrays(np.float64, n, elements=st.floats(-1, 1)), arrays(np.float64, n, elements=st.floats(-1, 1)))))
def test_ccc_matches_reference(xy):
    x, y = xy
    assert ccc(x, y) == pytest.approx(ccc_reference(list(x), list(y)), abs=1e-9)
    assert -1 - 1e-12 <= ccc(x, y) <= 1 + 1e-12


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(
    arrays(np.int64, n, elements=st.integers(0, 7)), arrays(np.int64, n, elements=st.integers(0, 7)))))
def test_expr_f1_matches_sklearn_over_all_8_classes(tp):
    t, p = tp
    ref = f1_score(t, p, labels=list(range(8)), average="macro", zero_division=0)
    assert expr_f1(t, p) == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(per_class_f1(t, p), f1_score(t, p, labels=list(range(8)), average=None,
                                                            zero_division=0), atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 50).flatmap(lambda n: st.tuples(
    arrays(np.int8, (n, 12), elements=st.integers(0, 1)), arrays(np.int8, (n, 12), elements=st.integers(0, 1)))))
def test_au_f1_matches_sklearn_binary(tp):
    t, p = tp
    ref = [f1_score(t[:, k], p[:, k], zero_division=0) for k in range(12)]
    np.testing.assert_allclose(per_au_f1(t, p), ref, atol=1e-12)
    assert au_f1(t, p) == pytest.approx(np.mean(ref))


def test_binary_f1_hand_computed():
    # tp=2, fp=1, fn=1 -> 2*2/(2*2+1+1) = 4/6
    assert binary_f1([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(4 / 6)


def test_class_absent_is_not_dropped():
    t = np.array([0, 0, 1, 1])
    p = np.array([0, 0, 1, 1])
    # perfect on the 2 present classes, the 6 absent ones count 0: 2/8, where
    # scikit-learn's default (labels seen only) would report 1.0
    assert expr_f1(t, p) == pytest.approx(2 / 8)
    assert f1_score(t, p, average="macro") == 1.0
    # a class predicted but absent from truth scores 0
    assert per_class_f1([0, 0], [0, 5])[5] == 0.0


def test_au_never_active():
    t = np.zeros((6, 12), int)
    t[:3, 0] = 1
    p = t.copy()
    f = per_au_f1(t, p)
    assert f[0] == 1.0 and (f[1:] == 0).all()  # never active, never predicted -> 0
    p[:, 5] = 1  # predicted but never active -> still 0
    assert per_au_f1(t, p)[5] == 0.0


def test_mtl_score_masks_and_total():
    rng = np.random.default_rng(0)
    n = 50
    va_t = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    va_t[:10] = -5
    ex_t = rng.integers(0, 8, n)
    ex_t[::3] = -1
    au_t = rng.integers(0, 2, (n, 12))
    au_t[40:] = -1
    va_p = va_t + rng.normal(0, 0.1, (n, 2))
    s = mtl_score(va_p, va_t, va_t[:, 0] != -5, ex_t.clip(0), ex_t, ex_t >= 0, au_t.clip(0), au_t, au_t[:, 0] >= 0)
    assert s.n_va == 40 and s.n_expr == int((ex_t >= 0).sum()) and s.n_au == 40
    assert s.va == pytest.approx((ccc(va_p[10:, 0], va_t[10:, 0]) + ccc(va_p[10:, 1], va_t[10:, 1])) / 2)
    assert s.au == 1.0
    assert s.total == pytest.approx(s.va + s.expr + s.au)
    assert s.tasks == ("va", "expr", "au")
    d = s.to_dict()
    assert d["au_per_au"]["AU26"] == 1.0 and d["total"] == pytest.approx(s.total)
    assert "P_MTL" in s.format_table() and "AU26" in s.format_table()


def test_all_labels_invalid_for_one_task():
    n = 8
    s = mtl_score(np.zeros((n, 2)), np.full((n, 2), -5.0), np.zeros(n, bool),
                  np.zeros(n, int), np.zeros(n, int), np.ones(n, bool),
                  np.zeros((n, 12)), np.zeros((n, 12)), np.ones(n, bool))
    assert s.va is None and s.n_va == 0
    assert s.tasks == ("expr", "au")
    assert s.total == pytest.approx(s.expr + s.au)
    assert "n/a" in s.format_table()


def test_confusion_matrix():
    cm = confusion_matrix([0, 1, 1, 7], [0, 1, 0, 7])
    assert cm.shape == (8, 8) and cm[1, 0] == 1 and cm[1, 1] == 1 and cm.sum() == 4
