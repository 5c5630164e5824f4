"""Fusion and temporal modules and the multi-task model: shapes, masks, causality."""

from __future__ import annotations

import pytest
import torch

from abaw.errors import AbawError
from abaw.config import from_dict, to_dict
from abaw.heads.fusion import native_width
from abaw.heads.temporal import run_chunked
from abaw.heads import (
    FUSIONS,
    HEAD_MODELS,
    TEMPORALS,
    ModelSpec,
    TemporalOptions,
    build_model,
    create_fusion,
    create_temporal,
)

pytestmark = pytest.mark.usefixtures("one_thread")

D = 16


def _inputs(b=3, w=7, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, w, D, generator=g) for _ in range(k)]


@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_shapes(name):
    torch.manual_seed(0)
    f = create_fusion(name, 3, D).eval()
    xs = _inputs(k=3)
    y = f(xs)
    assert y.shape == (3, 7, D) and torch.isfinite(y).all()
    # per-frame: changing frame 4 of one input changes only frame 4 of the output
    xs2 = [x.clone() for x in xs]
    xs2[1][:, 4] += torch.randn(D)
    y2 = f(xs2)
    changed = (y2 - y).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [False] * 4 + [True] + [False] * 2
    y.sum().backward()  # differentiable
    if name == "attention":
        a = f.last_weights
        assert a.shape == (3, 7, 3) and torch.allclose(a.sum(-1), torch.ones(3, 7))


def test_sum_fusion_is_order_invariant_and_concat_is_not():
    torch.manual_seed(0)
    xs = _inputs(k=2)
    s = create_fusion("sum", 2, D).eval()
    assert torch.allclose(s(xs), s(xs[::-1]), atol=1e-6)
    c = create_fusion("concat", 2, D).eval()
    assert not torch.allclose(c(xs), c(xs[::-1]), atol=1e-4)


def _prefix_mask(lengths, w):
    return torch.arange(w)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("name", TEMPORALS.names())
@pytest.mark.parametrize("causal", [False, True])
def test_temporal_shapes_and_padding_is_ignored(name, causal):
    torch.manual_seed(0)
    m = create_temporal(name, D, TemporalOptions(layers=2, heads=2, causal=causal, dropout=0.0)).eval()
    x = _inputs(b=3, w=9, k=1)[0]
    mask = _prefix_mask([9, 5, 1], 9)
    y = m(x, mask)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # whatever the padded positions hold, the outputs at real frames are the same
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), D) * 100
    y2 = m(x2, mask)
    assert torch.allclose(y[mask], y2[mask], atol=1e-5)
    # a window's outputs do not depend on the other windows of the batch
    y_alone = m(x[1:2, :5], mask[1:2, :5])
    assert torch.allclose(y_alone[0], y[1, :5], atol=1e-5)


@pytest.mark.parametrize("name", [n for n in TEMPORALS.names() if n != "none"])
def test_temporal_modules_use_context(name):
    torch.manual_seed(0)
    m = create_temporal(name, D, TemporalOptions(layers=2, heads=2, dropout=0.0)).eval()
    x = _inputs(b=1, w=8, k=1)[0]
    mask = torch.ones(1, 8, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 6] += torch.randn(D)
    d = (m(x2, mask) - m(x, mask)).abs().amax(-1)[0]
    assert d[5] > 1e-4 and d[7] > 1e-4  # neighbours on both sides see frame 6 (non-causal)


@pytest.mark.parametrize("name", [n for n in TEMPORALS.names() if n != "none"])
def test_causal_modules_do_not_look_ahead(name):
    torch.manual_seed(0)
    m = create_temporal(name, D, TemporalOptions(layers=3, heads=2, kernel=3, causal=True, dropout=0.0)).eval()
    x = _inputs(b=2, w=12, k=1)[0]
    mask = torch.ones(2, 12, dtype=torch.bool)
    y = m(x, mask)
    for t in (0, 5, 10):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 10  # change the future only
        y2 = m(x2, mask)
        assert torch.allclose(y[:, : t + 1], y2[:, : t + 1], atol=1e-5), f"frame <= {t} saw the future"
        assert not torch.allclose(y[:, t + 1:], y2[:, t + 1:], atol=1e-3)


def test_tcn_receptive_field():
    m = create_temporal("tcn", D, TemporalOptions(layers=3, kernel=3, causal=True, dropout=0.0)).eval()
    assert m.receptive_field() == 1 + 2 * (1 + 2 + 4)
    x = torch.randn(1, 30, D)
    mask = torch.ones(1, 30, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 5] += 5.0 * torch.randn(D)
    d = (m(x2, mask) - m(x, mask)).abs().amax(-1)[0]
    assert (d[:5] < 1e-6).all() and (d[5:20] > 0).all() and (d[20:] < 1e-6).all()


def test_rnn_rejects_non_prefix_masks():
    m = create_temporal("gru", D, TemporalOptions(layers=1, dropout=0.0))
    with pytest.raises(ValueError, match="prefix"):
        m(torch.randn(1, 4, D), torch.tensor([[True, False, True, True]]))


def test_unknown_modules_are_clear_errors():
    with pytest.raises(AbawError, match="unknown temporal module 'rnn'; known: gru, lstm, none, tcn, transformer"):
        create_temporal("rnn", D)
    with pytest.raises(AbawError, match="unknown fusion module"):
        create_fusion("max", 2, D)


@pytest.mark.parametrize("tasks", [("va", "expr", "au"), ("au",), ("va", "expr")])
def test_model_outputs(tasks):
    torch.manual_seed(0)
    spec = ModelSpec(keys=("a", "b.c"), dims=(10, 6), tasks=tasks, d_model=D, heads=2, temporal="transformer")
    m = build_model(spec).eval()
    feats = [torch.randn(2, 5, 10), torch.randn(2, 5, 6)]
    out = m(feats, torch.ones(2, 5, dtype=torch.bool))
    sizes = {"va": 2, "expr": 8, "au": 12}
    assert set(out) == set(tasks)
    for t in tasks:
        assert out[t].shape == (2, 5, sizes[t])
    if "va" in out:
        assert out["va"].abs().max() <= 1.0
    with pytest.raises(ValueError, match="expected 2 feature tensors"):
        m(feats[:1], torch.ones(2, 5, dtype=torch.bool))


def test_registries_hold_the_documented_entries():
    assert FUSIONS.names() == ["attention", "concat", "ffm", "sum"]
    assert TEMPORALS.names() == ["gru", "lstm", "none", "tcn", "transformer"]
    assert HEAD_MODELS.names() == ["linear", "multitask"]


@pytest.mark.parametrize("arch", HEAD_MODELS.names())
@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("temporal", TEMPORALS.names())
def test_head_model_contract(arch, fusion, temporal):
    """Every head architecture x fusion x temporal module: forward shapes, padded frames do not
    change real ones, backward reaches every parameter, and the spec rebuilds the same model."""
    torch.manual_seed(0)
    dims = (10, 10) if native_width(fusion) else (10, 6)  # ffm: equal widths
    spec = ModelSpec(keys=("a", "b"), dims=dims, fusion=fusion, temporal=temporal, d_model=D, heads=2,
                     layers=1, dropout=0.0, arch=arch)
    m = build_model(spec)
    feats = [torch.randn(2, 6, dims[0]), torch.randn(2, 6, dims[1])]
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = m(feats, mask)
    assert {t: tuple(v.shape) for t, v in out.items()} == {"va": (2, 6, 2), "expr": (2, 6, 8), "au": (2, 6, 12)}
    sum(v.float().sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    m.eval()
    ref = m(feats, mask)
    noisy = [x.clone() for x in feats]
    for x in noisy:
        x[1, 4:] = 100 * torch.randn_like(x[1, 4:])
    out2 = m(noisy, mask)
    for t in ref:
        assert torch.allclose(ref[t][mask], out2[t][mask], atol=1e-4), t
    spec2 = from_dict(ModelSpec, to_dict(spec))  # the spec as saved in checkpoints
    assert spec2 == spec
    m2 = build_model(spec2).eval()
    m2.load_state_dict(m.state_dict())
    assert all(torch.equal(ref[t], m2(feats, mask)[t]) for t in ref)


# ------------------------------------------------------------------ the ABAW7 winner's variants


def test_ffm_sums_native_features_then_mlp_and_leaky_relu():
    torch.manual_seed(0)
    spec = ModelSpec(keys=("au", "expr", "va"), dims=(12, 12, 12), fusion="ffm", temporal="none", d_model=12)
    m = build_model(spec).eval()
    assert all(len(p) == 1 for p in m.proj)  # standardisation only: no learned projection
    assert isinstance(m.resize, torch.nn.Identity)
    feats = [torch.randn(2, 3, 12) for _ in range(3)]
    f = m.fusion
    assert [type(x).__name__ for x in f.mlp] == ["Linear", "ReLU", "Dropout", "Linear"] and f.mlp[2].p == 0.3
    expect = torch.nn.functional.leaky_relu(f.mlp(feats[0] + feats[1] + feats[2]), 0.1)
    assert torch.allclose(m.fuse(feats), expect, atol=1e-6)
    wide = build_model(ModelSpec(keys=("a", "b"), dims=(12, 12), fusion="ffm", d_model=D, heads=2))
    assert wide.resize.in_features == 12 and wide.resize.out_features == D  # like the winner's pre_linear
    with pytest.raises(AbawError, match="fusion ffm .* same width \\(got a 10, b 6\\)"):
        build_model(ModelSpec(keys=("a", "b"), dims=(10, 6), fusion="ffm", d_model=D))


def test_transformer_without_positions_is_permutation_equivariant():
    torch.manual_seed(0)
    x = torch.randn(2, 6, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    for posenc in (False, True):
        t = create_temporal("transformer", D, TemporalOptions(heads=2, dropout=0.0, posenc=posenc)).eval()
        same = torch.allclose(t(x, mask)[:, perm], t(x[:, perm], mask), atol=1e-5)
        assert same == (not posenc)


def test_causal_lstm_is_unidirectional():
    t = create_temporal("lstm", D, TemporalOptions(layers=1, causal=True, dropout=0.0))
    assert not t.rnn.bidirectional and t.rnn.hidden_size == D


def test_run_chunked_gives_no_context_across_chunks():
    torch.manual_seed(0)
    t = create_temporal("transformer", D, TemporalOptions(heads=2, dropout=0.0)).eval()
    x = torch.randn(1, 7, D)
    mask = torch.tensor([[True] * 6 + [False]])
    y = run_chunked(t, x, mask, 3)  # chunks [0:3], [3:6], [6:7] (padding only: zeros)
    assert torch.allclose(y[:, :3], t(x[:, :3], mask[:, :3]), atol=1e-6)
    assert torch.allclose(y[:, 3:6], t(x[:, 3:6], mask[:, 3:6]), atol=1e-6)
    assert torch.equal(y[:, 6], torch.zeros(1, D))
    assert torch.equal(run_chunked(t, x, mask, 0), t(x, mask))


def test_task_windows_limit_each_tasks_context():
    """The winner's windows: AU sees its own frame, EXPR its chunk of 5, VA the whole window."""
    torch.manual_seed(0)
    spec = ModelSpec(keys=("a",), dims=(10,), temporal="lstm", d_model=D, layers=1, dropout=0.0,
                     task_windows=(0, 5, 1))
    m = build_model(spec).eval()
    x = torch.randn(1, 10, 10)
    mask = torch.ones(1, 10, dtype=torch.bool)
    y = x.clone()
    y[0, 7] += 3.0  # change frame 7 (in the second chunk of 5)
    a, b = m([x], mask), m([y], mask)
    changed = {t: ((a[t] - b[t]).abs().amax(-1) > 1e-6)[0].nonzero().flatten().tolist() for t in a}
    assert changed["au"] == [7]
    assert changed["expr"] == [5, 6, 7, 8, 9]
    assert changed["va"] == list(range(10))
    with pytest.raises(AbawError, match="task_windows"):
        ModelSpec(task_windows=(0, -1, 1)).validate()
