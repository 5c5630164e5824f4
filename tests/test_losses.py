"""Task losses: CCC loss = 1 - metric CCC, masking, all-invalid batches, weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from abaw.heads.losses import (
    MultiTaskLoss,
    au_loss,
    ccc_loss,
    expr_loss,
    inverse_frequency_weights,
    positive_weights,
    va_loss,
)
from abaw.metrics import ccc

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ccc_loss_equals_one_minus_metric():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 500):
        x = rng.uniform(-1, 1, n)
        y = 0.5 * x + rng.normal(0, 0.3, n) + 0.1
        got = float(ccc_loss(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)))
        assert got == pytest.approx(1 - ccc(x, y), abs=1e-9)
    c = np.full(5, 0.3)  # both constant and equal: metric says 0, loss 1
    assert float(ccc_loss(torch.tensor(c), torch.tensor(c))) == pytest.approx(1.0)
    assert float(ccc_loss(torch.tensor(y), torch.tensor(y))) == pytest.approx(0.0, abs=1e-6)


def test_va_loss_uses_only_valid_frames_of_the_batch():
    rng = np.random.default_rng(1)
    pred = rng.uniform(-1, 1, (3, 6, 2)).astype(np.float32)
    true = rng.uniform(-1, 1, (3, 6, 2)).astype(np.float32)
    valid = rng.random((3, 6)) < 0.6
    true_bad = true.copy()
    true_bad[~valid] = -5.0  # invalid codes must not matter
    got = float(va_loss(torch.tensor(pred), torch.tensor(true_bad), torch.tensor(valid)))
    p, t = pred[valid], true[valid]
    want = 1 - (ccc(p[:, 0], t[:, 0]) + ccc(p[:, 1], t[:, 1])) / 2
    assert got == pytest.approx(want, abs=1e-5)
    # the ABAW7 winner's scale: the two losses summed (twice the mean)
    summed = float(va_loss(torch.tensor(pred), torch.tensor(true_bad), torch.tensor(valid), "sum"))
    assert summed == pytest.approx((1 - ccc(p[:, 0], t[:, 0])) + (1 - ccc(p[:, 1], t[:, 1])), abs=1e-5)
    out, batch = {"va": torch.tensor(pred)}, {"va": torch.tensor(true_bad), "va_valid": torch.tensor(valid)}
    total, _ = MultiTaskLoss(("va",), {}, va_scale="sum")(out, batch)
    assert float(total) == pytest.approx(summed, abs=1e-6)
    with pytest.raises(ValueError, match="va_scale"):
        MultiTaskLoss(("va",), {}, va_scale="winner")


def test_all_invalid_batch_gives_zero_not_nan():
    logits_e = torch.randn(2, 4, 8, requires_grad=True)
    logits_a = torch.randn(2, 4, 12, requires_grad=True)
    va = torch.tanh(torch.randn(2, 4, 2, requires_grad=True))
    none = torch.zeros(2, 4, dtype=torch.bool)
    batch = {"va": torch.full((2, 4, 2), -5.0), "expr": torch.zeros(2, 4, dtype=torch.long),
             "au": torch.zeros(2, 4, 12), "va_valid": none, "expr_valid": none, "au_valid": none}
    lf = MultiTaskLoss(("va", "expr", "au"), {"va": 1, "expr": 1, "au": 1},
                       expr_class_weight=torch.ones(8), au_pos_weight=torch.full((12,), 3.0))
    total, parts = lf({"va": va, "expr": logits_e, "au": logits_a}, batch)
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())
    total.backward()  # still a graph; gradients are zero, not NaN
    assert torch.equal(logits_e.grad, torch.zeros_like(logits_e))
    assert torch.equal(logits_a.grad, torch.zeros_like(logits_a))


def test_expr_and_au_losses_are_masked():
    torch.manual_seed(0)
    lg = torch.randn(2, 5, 8)
    t = torch.randint(0, 8, (2, 5))
    valid = torch.rand(2, 5) < 0.5
    valid[0, 0] = True
    want = F.cross_entropy(lg[valid], t[valid])
    assert float(expr_loss(lg, t, valid)) == pytest.approx(float(want), rel=1e-6)
    # garbage targets at invalid frames do not matter
    t2 = t.clone()
    t2[~valid] = 3
    assert float(expr_loss(lg, t2, valid)) == pytest.approx(float(want), rel=1e-6)
    w = torch.rand(8) + 0.5
    want_w = F.cross_entropy(lg[valid], t[valid], weight=w)
    assert float(expr_loss(lg, t, valid, w)) == pytest.approx(float(want_w), rel=1e-5)

    la = torch.randn(2, 5, 12)
    ta = (torch.rand(2, 5, 12) < 0.3).float()
    pw = torch.rand(12) * 3 + 1
    want_a = F.binary_cross_entropy_with_logits(la[valid], ta[valid], pos_weight=pw)
    assert float(au_loss(la, ta, valid, pw)) == pytest.approx(float(want_a), rel=1e-6)


def test_task_weights_and_switched_off_tasks():
    torch.manual_seed(0)
    out = {"va": torch.tanh(torch.randn(2, 3, 2)), "expr": torch.randn(2, 3, 8), "au": torch.randn(2, 3, 12)}
    ok = torch.ones(2, 3, dtype=torch.bool)
    batch = {"va": torch.rand(2, 3, 2) * 2 - 1, "expr": torch.randint(0, 8, (2, 3)),
             "au": (torch.rand(2, 3, 12) < 0.5).float(), "va_valid": ok, "expr_valid": ok, "au_valid": ok}
    full, parts = MultiTaskLoss(("va", "expr", "au"), {"va": 1.0, "expr": 2.0, "au": 0.5})(out, batch)
    assert float(full) == pytest.approx(float(parts["va"] + 2 * parts["expr"] + 0.5 * parts["au"]), rel=1e-6)
    only_au, parts_au = MultiTaskLoss(("au",), {"va": 1, "expr": 1, "au": 1})({"au": out["au"]}, batch)
    assert set(parts_au) == {"au"} and float(only_au) == pytest.approx(float(parts["au"]))
    off = MultiTaskLoss(("va", "expr", "au"), {"va": 1, "expr": 0, "au": 1})
    assert off.tasks == ("va", "au")


def test_class_and_positive_weights():
    w = inverse_frequency_weights(np.array([0, 0, 0, 1, 4, 4]))
    assert w[2] == 0 and w[1] > w[4] > w[0] > 0
    assert w[[0, 1, 4]].mean() == pytest.approx(1.0)
    au = np.zeros((10, 12), np.int8)
    au[:2, 0] = 1
    au[:, 1] = 1
    pw = positive_weights(au)
    assert pw[0] == pytest.approx(4.0) and pw[1] == 1.0 and pw[2] == 10.0  # no positive: negatives / 1


def test_balanced_positive_weights_are_unclipped():
    """`au_pos_weight=balanced`: negatives / positives without the cap of 20 (`auto`)."""
    au = np.zeros((100, 12), np.int8)
    au[:2, 0] = 1  # 2 % positives: 49 negatives per positive
    assert positive_weights(au)[0] == pytest.approx(20.0)
    assert positive_weights(au, np.inf)[0] == pytest.approx(49.0)
