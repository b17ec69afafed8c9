"""The eSSPR losses (encoder.loss) against naive per-element references, values and gradients.

The references below use plain Python loops over 0-dim torch tensors (no matrix ops, no
vectorisation), so autograd runs on both sides and the inputs' ``.grad`` can be compared. Data
is float64 from a ``torch.Generator`` with the seed in each test id. Small 2x2 cases are
computed by hand in the comments.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import encoder
from encoder.config import LossConfig
from encoder.loss import (
    LOSS_PARTS,
    locality_consistency,
    ppm_hinge,
    self_distinctiveness,
    total_loss,
)

DIM = 6
BATCH_SIZES = (1, 2, 5, 17)
RTOL = 1e-9
ATOL = 1e-12


# --- naive references --------------------------------------------------------------------------


def _max0(x: torch.Tensor) -> torch.Tensor:
    """max(0, x) for a 0-dim tensor, by a Python comparison."""
    return x if x.item() > 0.0 else torch.zeros((), dtype=torch.float64)


def _ref_unit_rows(x: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each row as a list of scalars divided by max(its L2 norm, 1e-12)."""
    rows = []
    for r in range(x.shape[0]):
        squares = torch.zeros((), dtype=x.dtype)
        for d in range(x.shape[1]):
            squares = squares + x[r, d] * x[r, d]
        norm = torch.clamp(torch.sqrt(squares), min=1e-12)
        rows.append([x[r, d] / norm for d in range(x.shape[1])])
    return rows


def _ref_cosine(a: torch.Tensor, b: torch.Tensor) -> list[list[torch.Tensor]]:
    """S[r][j] = <a_r / |a_r|, b_j / |b_j|>, one scalar product at a time."""
    ua, ub = _ref_unit_rows(a), _ref_unit_rows(b)
    s = []
    for r in range(len(ua)):
        row = []
        for j in range(len(ub)):
            dot = torch.zeros((), dtype=a.dtype)
            for d in range(len(ua[r])):
                dot = dot + ua[r][d] * ub[j][d]
            row.append(dot)
        s.append(row)
    return s


def _ref_mean_rows(per_row: list[torch.Tensor | None]) -> torch.Tensor:
    """Mean of the kept (not None) row losses, 0 when none is kept."""
    kept = [v for v in per_row if v is not None]
    if not kept:
        return torch.zeros((), dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for v in kept:
        total = total + v
    return total / len(kept)


def ref_hinge(queries, targets, margin, mask=None) -> torch.Tensor:
    """docs/PAPER.md §3: mean over rows of mean_j max(0, S_rj - S_rr + margin*(1 - delta_rj))."""
    s = _ref_cosine(queries, targets)
    b = len(s)
    per_row = []
    for r in range(b):
        if mask is not None and not bool(mask[r]):
            per_row.append(None)
            continue
        row_total = torch.zeros((), dtype=torch.float64)
        for j in range(b):
            row_total = row_total + _max0(s[r][j] - s[r][r] + (margin if j != r else 0.0))
        per_row.append(row_total / b)  # the diagonal's zero counts in the mean
    return _ref_mean_rows(per_row)


def ref_locality(full, view, offers, k, margin, mask=None) -> torch.Tensor:
    """docs/PAPER.md §3: mean over the top-k of D's row of max(0, (D - D')^2 - margin)."""
    d_full = _ref_cosine(full, offers)
    d_view = _ref_cosine(view, offers)
    n = len(d_full[0])
    k = min(k, n)
    per_row = []
    for r in range(len(d_full)):
        if mask is not None and not bool(mask[r]):
            per_row.append(None)
            continue
        top = sorted(range(n), key=lambda j: -d_full[r][j].item())[:k]
        row_total = torch.zeros((), dtype=torch.float64)
        for j in top:
            gap = d_full[r][j] - d_view[r][j]
            row_total = row_total + _max0(gap * gap - margin)
        per_row.append(row_total / k)
    return _ref_mean_rows(per_row)


def ref_total(trigger, offer, config: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the seven terms, each from the references above."""
    m, t, i, om = trigger["m"], trigger["t"], trigger["i"], offer["m"]
    has_text, has_image = trigger.get("has_text"), trigger.get("has_image")
    parts = {
        "ppm_mm": ref_hinge(m, om, config.ppm_margin),
        "ppm_tm": ref_hinge(t, om, config.ppm_margin, has_text),
        "ppm_im": ref_hinge(i, om, config.ppm_margin, has_image),
        "self_distinctiveness_t": ref_hinge(t, m, config.self_distinctiveness_margin, has_text),
        "self_distinctiveness_i": ref_hinge(i, m, config.self_distinctiveness_margin, has_image),
        "locality_consistency_t": ref_locality(m, t, om, config.locality_top_k, config.locality_margin, has_text),
        "locality_consistency_i": ref_locality(m, i, om, config.locality_top_k, config.locality_margin, has_image),
    }
    weights = {
        "ppm_mm": config.ppm_mm_weight,
        "ppm_tm": config.ppm_tm_weight,
        "ppm_im": config.ppm_im_weight,
        "self_distinctiveness_t": config.self_distinctiveness_weight,
        "self_distinctiveness_i": config.self_distinctiveness_weight,
        "locality_consistency_t": config.locality_consistency_weight,
        "locality_consistency_i": config.locality_consistency_weight,
    }
    loss = torch.zeros((), dtype=torch.float64)
    for name, part in parts.items():
        loss = loss + weights[name] * part
    return loss, parts


# --- helpers -----------------------------------------------------------------------------------


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _random_mask(seed: int, b: int) -> torch.Tensor:
    """About 2/3 True; at least one True and (for b > 1) one False, so both paths run."""
    mask = torch.rand(b, generator=torch.Generator().manual_seed(seed)) < 0.67
    mask[0] = True
    if b > 1:
        mask[-1] = False
    return mask


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [x.detach().clone().requires_grad_(True) for x in tensors]


def _value_and_grads(fn, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(*fresh leaves) and the leaves' .grad after backward (zeros where no grad flowed)."""
    leaves = _leaves(*tensors)
    value = fn(*leaves)
    if value.requires_grad:
        value.backward()
    grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in leaves]
    return value.detach(), grads


def _assert_parity(fn, ref, tensors: list[torch.Tensor]) -> torch.Tensor:
    value, grads = _value_and_grads(fn, tensors)
    ref_value, ref_grads = _value_and_grads(ref, tensors)
    torch.testing.assert_close(value, ref_value, rtol=RTOL, atol=ATOL)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    return value


def _batch(seed: int, b: int, masks: bool) -> tuple[dict, dict]:
    trigger = {
        "m": _randn(seed, b, DIM),
        "t": _randn(seed + 1, b, DIM),
        "i": _randn(seed + 2, b, DIM),
        "has_text": _random_mask(seed + 3, b) if masks else None,
        "has_image": _random_mask(seed + 4, b) if masks else None,
    }
    offer = {"m": _randn(seed + 5, b, DIM)}
    return trigger, offer


# --- hand-computed 2x2 cases -------------------------------------------------------------------

# Queries (1, 0), (0, 2) normalise to q0 = (1, 0), q1 = (0, 1).
# Targets (4, 3), (0, 5) normalise to o0 = (0.8, 0.6), o1 = (0, 1).
# S = q . o^T = [[0.8, 0.0],
#                [0.6, 1.0]]
Q = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
O = torch.tensor([[4.0, 3.0], [0.0, 5.0]], dtype=torch.float64)


def test_ppm_hinge_2x2_by_hand():
    # margin 0.5:
    # row 0: j=0 -> 0 (diagonal); j=1 -> max(0, 0.0 - 0.8 + 0.5) = 0       -> mean 0
    # row 1: j=0 -> max(0, 0.6 - 1.0 + 0.5) = 0.1; j=1 -> 0 (diagonal)     -> mean 0.05
    # loss = (0 + 0.05) / 2 = 0.025. (Leaving the diagonal out of the mean would give 0.05;
    # hinging columns instead of rows would give row-of-S^T values 0.15 and 0 -> 0.075.)
    assert ppm_hinge(Q, O, 0.5).item() == pytest.approx(0.025, abs=1e-12)
    # Only row 0 kept -> 0; only row 1 kept -> 0.05.
    assert ppm_hinge(Q, O, 0.5, torch.tensor([True, False])).item() == pytest.approx(0.0)
    assert ppm_hinge(Q, O, 0.5, torch.tensor([False, True])).item() == pytest.approx(0.05)
    # margin 0: every term is max(0, S_rj - S_rr) = 0 here, since each positive is its row's max.
    assert ppm_hinge(Q, O, 0.0).item() == pytest.approx(0.0, abs=1e-12)


def test_ppm_hinge_2x2_gradient_by_hand():
    # With margin 0.5 only the (1, 0) term is active, so loss = (S_10 - S_11 + 0.5) / 4 and
    # d loss / d q1 = (o0 - o1) / 4 projected off q1 = (0, 1) (the normalisation's Jacobian at a
    # unit vector is I - q q^T; |(0, 2)| = 2 divides it once more):
    # (o0 - o1) / 4 = (0.2, -0.1); projected -> (0.2, 0); / 2 -> (0.1, 0). q0 gets no gradient.
    q = Q.clone().requires_grad_(True)
    ppm_hinge(q, O, 0.5).backward()
    torch.testing.assert_close(q.grad, torch.tensor([[0.0, 0.0], [0.1, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)


def test_self_distinctiveness_2x2_by_hand():
    # view = Q, full = O: S = norm(view) . norm(full)^T is the S above -> 0.025 as in PPM.
    assert self_distinctiveness(Q, O, 0.5).item() == pytest.approx(0.025, abs=1e-12)
    # view = O, full = Q: S = [[0.8, 0.6], [0.0, 1.0]]
    # row 0: j=1 -> max(0, 0.6 - 0.8 + 0.5) = 0.3 -> mean 0.15; row 1: j=0 -> max(0, -0.5) = 0.
    # loss = 0.075, so the argument order (rows = views) matters.
    assert self_distinctiveness(O, Q, 0.5).item() == pytest.approx(0.075, abs=1e-12)


def test_locality_consistency_2x2_by_hand():
    # full = Q -> D = [[0.8, 0.0], [0.6, 1.0]] against offers O (as above).
    # view (3, 4), (1, 0) normalises to (0.6, 0.8), (1, 0):
    # D' = [[0.6*0.8 + 0.8*0.6, 0.8*1.0], [0.8, 0.0]] = [[0.96, 0.8], [0.8, 0.0]]
    # (D - D')^2 = [[0.0256, 0.64], [0.04, 1.0]]
    # top-1 of D per row: row 0 -> col 0 (0.8 > 0), row 1 -> col 1 (1.0 > 0.6).
    view = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    # k=1, margin 0: (0.0256 + 1.0) / 2 = 0.5128. (Choosing the top-1 on D' instead would pick
    # col 0 in row 1 and give (0.0256 + 0.04) / 2 = 0.0328.)
    assert locality_consistency(Q, view, O, 1, 0.0).item() == pytest.approx(0.5128, abs=1e-12)
    # k=1, margin 0.03: (max(0, 0.0256 - 0.03) + max(0, 1.0 - 0.03)) / 2 = 0.97 / 2 = 0.485.
    assert locality_consistency(Q, view, O, 1, 0.03).item() == pytest.approx(0.485, abs=1e-12)
    # k=10 is clamped to 2 (every offer): rows (0.0256 + 0.64) / 2 = 0.3328 and
    # (0.04 + 1.0) / 2 = 0.52 -> 0.4264.
    assert locality_consistency(Q, view, O, 10, 0.0).item() == pytest.approx(0.4264, abs=1e-12)
    assert locality_consistency(Q, view, O, 2, 0.0).item() == pytest.approx(0.4264, abs=1e-12)
    # Row 1 masked -> only row 0's 0.0256.
    mask = torch.tensor([True, False])
    assert locality_consistency(Q, view, O, 1, 0.0, mask).item() == pytest.approx(0.0256)


# --- parity with the references, values and gradients ------------------------------------------


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("margin", [0.2, 0.6])
@pytest.mark.parametrize("b", BATCH_SIZES, ids=lambda b: f"b{b}-seed{100 + b}")
def test_ppm_hinge_matches_reference(b, margin, masked):
    seed = 100 + b
    mask = _random_mask(seed + 9, b) if masked else None
    _assert_parity(
        lambda q, o: ppm_hinge(q, o, margin, mask),
        lambda q, o: ref_hinge(q, o, margin, mask),
        [_randn(seed, b, DIM), _randn(seed + 1, b, DIM)],
    )


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("b", BATCH_SIZES, ids=lambda b: f"b{b}-seed{200 + b}")
def test_self_distinctiveness_matches_reference(b, masked):
    seed = 200 + b
    mask = _random_mask(seed + 9, b) if masked else None
    _assert_parity(
        lambda v, f: self_distinctiveness(v, f, 0.2, mask),
        lambda v, f: ref_hinge(v, f, 0.2, mask),
        [_randn(seed, b, DIM), _randn(seed + 1, b, DIM)],
    )


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
@pytest.mark.parametrize("margin", [0.0, 0.01])
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("b", BATCH_SIZES, ids=lambda b: f"b{b}-seed{300 + b}")
def test_locality_consistency_matches_reference(b, k, margin, masked):
    seed = 300 + b
    mask = _random_mask(seed + 9, b) if masked else None
    value = _assert_parity(
        lambda f, v, o: locality_consistency(f, v, o, k, margin, mask),
        lambda f, v, o: ref_locality(f, v, o, k, margin, mask),
        [_randn(seed, b, DIM), _randn(seed + 1, b, DIM), _randn(seed + 2, b, DIM)],
    )
    if margin == 0.0:
        assert value > 0  # random views disagree somewhere, so the test is not trivially 0 = 0


def test_locality_consistency_offers_need_not_match_trigger_count():
    seed = 350
    _assert_parity(
        lambda f, v, o: locality_consistency(f, v, o, 4, 0.0),
        lambda f, v, o: ref_locality(f, v, o, 4, 0.0),
        [_randn(seed, 3, DIM), _randn(seed + 1, 3, DIM), _randn(seed + 2, 7, DIM)],
    )


CONFIGS = {
    "default": LossConfig(),
    "custom": LossConfig(
        ppm_margin=0.5,
        self_distinctiveness_margin=0.1,
        locality_margin=0.0,
        locality_top_k=3,
        ppm_mm_weight=2.0,
        ppm_tm_weight=0.5,
        ppm_im_weight=0.25,
        self_distinctiveness_weight=0.3,
        locality_consistency_weight=4.0,
    ),
}


@pytest.mark.parametrize("masks", [False, True], ids=["no-masks", "masks"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("b", BATCH_SIZES, ids=lambda b: f"b{b}-seed{400 + b}")
def test_total_loss_matches_reference(b, config_name, masks):
    config = CONFIGS[config_name]
    trigger, offer = _batch(400 + b, b, masks)
    names = ["m", "t", "i"]

    def run(fn, m, t, i, om):
        loss, parts = fn({**trigger, "m": m, "t": t, "i": i}, {"m": om}, config)
        run.parts = parts
        return loss

    tensors = [trigger["m"], trigger["t"], trigger["i"], offer["m"]]
    value, grads = _value_and_grads(lambda *x: run(total_loss, *x), tensors)
    parts = run.parts
    ref_value, ref_grads = _value_and_grads(lambda *x: run(ref_total, *x), tensors)
    ref_parts = run.parts

    assert tuple(parts) == LOSS_PARTS
    torch.testing.assert_close(value, ref_value, rtol=RTOL, atol=ATOL)
    for name in LOSS_PARTS:
        torch.testing.assert_close(parts[name], ref_parts[name].detach(), rtol=RTOL, atol=ATOL)
        assert not parts[name].requires_grad
    for name, got, want in zip([*names, "offer m"], grads, ref_grads, strict=True):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"grad of {name}")


# --- edge cases --------------------------------------------------------------------------------


def test_batch_of_one():
    # One pair: the hinge has only the diagonal term max(0, 0) = 0. Locality's k is clamped to
    # 1 and compares the single offer: (D - D')^2 - margin.
    full, view, offers = _leaves(_randn(500, 1, DIM), _randn(501, 1, DIM), _randn(502, 1, DIM))
    assert ppm_hinge(full, offers, 0.2).item() == 0.0
    assert self_distinctiveness(view, full, 0.2).item() == 0.0
    loss = locality_consistency(full, view, offers, 10, 0.0)
    d = torch.nn.functional.cosine_similarity(full, offers)
    d_view = torch.nn.functional.cosine_similarity(view, offers)
    assert loss.item() == pytest.approx(((d - d_view) ** 2).item(), rel=1e-12)
    loss.backward()
    for x in (full, view, offers):
        assert torch.isfinite(x.grad).all()

    trigger, offer = _batch(510, 1, masks=False)
    loss, parts = total_loss(trigger, offer)
    for name in ("ppm_mm", "ppm_tm", "ppm_im", "self_distinctiveness_t", "self_distinctiveness_i"):
        assert parts[name].item() == 0.0


@pytest.mark.parametrize("b", [2, 5, 9])
def test_k_larger_than_batch_is_clamped(b):
    full, view, offers = _randn(600 + b, b, DIM), _randn(610 + b, b, DIM), _randn(620 + b, b, DIM)
    clamped = locality_consistency(full, view, offers, 10, 0.01)
    assert clamped.item() == locality_consistency(full, view, offers, b, 0.01).item()
    assert clamped.item() != locality_consistency(full, view, offers, 1, 0.01).item()


def test_all_masked_terms_are_zero_not_nan():
    b = 5
    trigger, offer = _batch(700, b, masks=False)
    trigger["has_text"] = torch.zeros(b, dtype=torch.bool)
    trigger["has_image"] = np.zeros(b, dtype=bool)  # numpy masks work too (as EncodedListings)
    m, t, i, om = _leaves(trigger["m"], trigger["t"], trigger["i"], offer["m"])
    loss, parts = total_loss({**trigger, "m": m, "t": t, "i": i}, {"m": om})
    for name in LOSS_PARTS:
        assert torch.isfinite(parts[name]), name
        if name != "ppm_mm":
            assert parts[name].item() == 0.0, name
    assert parts["ppm_mm"].item() > 0
    loss.backward()
    for x in (m, t, i, om):
        assert torch.isfinite(x.grad).all()
    assert (t.grad == 0).all() and (i.grad == 0).all()

    # Each function on its own: 0 with a graph, so backward() still works.
    q = _leaves(_randn(701, b, DIM))[0]
    none = torch.zeros(b, dtype=torch.bool)
    for value in (
        ppm_hinge(q, offer["m"], 0.2, none),
        self_distinctiveness(q, trigger["m"], 0.2, none),
        locality_consistency(trigger["m"], q, offer["m"], 3, 0.0, none),
    ):
        assert value.item() == 0.0
        value.backward()
        assert torch.isfinite(q.grad).all() and (q.grad == 0).all()
        q.grad = None


def test_listing_without_image_adds_no_image_term():
    b = 6
    trigger, offer = _batch(800, b, masks=False)
    has_image = torch.tensor([True, True, False, True, True, True])
    trigger["has_image"] = has_image
    before, parts_before = total_loss(trigger, offer)
    # Whatever sits in row 2 of i (zeros from the encoder, or noise) changes nothing.
    for replacement in (torch.zeros(DIM, dtype=torch.float64), 100 * _randn(801, DIM)):
        i = trigger["i"].clone()
        i[2] = replacement
        i.requires_grad_(True)
        after, _parts_after = total_loss({**trigger, "i": i}, offer)
        torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)
        after.backward()
        assert (i.grad[2] == 0).all()
        assert (i.grad[has_image] != 0).any()
    # Without the mask, the same noise does change the i terms.
    i = trigger["i"].clone()
    i[2] = 100 * _randn(801, DIM)
    _, unmasked = total_loss({**trigger, "i": i, "has_image": None}, offer)
    assert unmasked["ppm_im"].item() != parts_before["ppm_im"].item()


def test_zero_rows_give_finite_gradients_even_unmasked():
    # A missing modality arrives as an all-zero row; the 1e-12 norm floor keeps it at 0.
    b = 4
    trigger, offer = _batch(900, b, masks=False)
    trigger["i"][1] = 0.0
    trigger["t"][3] = 0.0
    m, t, i, om = _leaves(trigger["m"], trigger["t"], trigger["i"], offer["m"])
    loss, parts = total_loss({"m": m, "t": t, "i": i}, {"m": om})
    assert all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    for x in (m, t, i, om):
        assert torch.isfinite(x.grad).all()


def test_inputs_need_not_be_normalised():
    b = 5
    trigger, offer = _batch(1000, b, masks=True)

    def scale(x: torch.Tensor, seed: int) -> torch.Tensor:
        """Each row times a factor in [0.1, 10.1)."""
        g = torch.Generator().manual_seed(seed)
        return x * (0.1 + 10 * torch.rand(x.shape[0], 1, generator=g, dtype=torch.float64))

    scaled = {**trigger, **{k: scale(trigger[k], 1001 + n) for n, k in enumerate("mti")}}
    loss, _ = total_loss(trigger, offer)
    loss_scaled, _ = total_loss(scaled, {"m": scale(offer["m"], 1010)})
    torch.testing.assert_close(loss_scaled, loss, rtol=1e-12, atol=1e-12)


def test_total_is_the_weighted_sum_of_parts_and_zero_weight_drops_a_term():
    trigger, offer = _batch(1100, 8, masks=True)
    config = CONFIGS["custom"]
    loss, parts = total_loss(trigger, offer, config)
    weights = (2.0, 0.5, 0.25, 0.3, 0.3, 4.0, 4.0)
    expected = sum(w * parts[name] for w, name in zip(weights, LOSS_PARTS, strict=True))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    without_im = dataclasses.replace(config, ppm_im_weight=0.0)
    loss_without, _ = total_loss(trigger, offer, without_im)
    torch.testing.assert_close(loss_without, loss - 0.25 * parts["ppm_im"], rtol=1e-12, atol=1e-12)
    assert parts["ppm_im"].item() > 0


def test_total_loss_accepts_dataclass_outputs_and_float32():
    @dataclasses.dataclass
    class Outputs:
        m: torch.Tensor
        t: torch.Tensor
        i: torch.Tensor
        has_text: np.ndarray | None = None
        has_image: np.ndarray | None = None

    trigger, offer = _batch(1200, 5, masks=True)
    as_dataclass = Outputs(
        m=trigger["m"].float(),
        t=trigger["t"].float(),
        i=trigger["i"].float(),
        has_text=trigger["has_text"].numpy(),
        has_image=trigger["has_image"].numpy(),
    )
    loss32, _ = total_loss(as_dataclass, Outputs(m=offer["m"].float(), t=None, i=None))
    loss64, _ = total_loss(trigger, offer)
    assert loss32.dtype == torch.float32
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-5)


# --- argument checks ---------------------------------------------------------------------------

A = torch.zeros(3, DIM)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ppm_hinge(A, torch.zeros(4, DIM), 0.2), "row-aligned"),
        (lambda: ppm_hinge(A, torch.zeros(3, DIM + 1), 0.2), "same width"),
        (lambda: ppm_hinge(torch.zeros(DIM), A, 0.2), "2-D"),
        (lambda: ppm_hinge(torch.zeros(0, DIM), torch.zeros(0, DIM), 0.2), "at least one row"),
        (lambda: ppm_hinge(A.numpy(), A, 0.2), "torch.Tensor"),
        (lambda: ppm_hinge(A, A, float("nan")), "margin"),
        (lambda: ppm_hinge(A, A, 0.2, torch.ones(4, dtype=torch.bool)), r"shape \(3,\)"),
        (lambda: ppm_hinge(A, A, 0.2, torch.ones(3)), "boolean"),
        (lambda: self_distinctiveness(A, torch.zeros(2, DIM), 0.2), "row-aligned"),
        (lambda: locality_consistency(A, torch.zeros(2, DIM), A, 10, 0.0), "row-aligned"),
        (lambda: locality_consistency(A, A, torch.zeros(5, DIM + 1), 10, 0.0), "same width"),
        (lambda: locality_consistency(A, A, A, 0, 0.0), "k=0"),
        (lambda: locality_consistency(A, A, A, 2.5, 0.0), "k=2.5"),
        (lambda: total_loss({"m": A, "t": A}, {"m": A}), "no 'i'"),
        (lambda: total_loss({"m": A, "t": A, "i": A}, {}), "offer outputs have no 'm'"),
        (
            lambda: total_loss({"m": A, "t": A, "i": A, "has_image": [True]}, {"m": A}),
            "has_image|query_mask|view_mask",
        ),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- config ------------------------------------------------------------------------------------


def test_loss_config_defaults_are_the_documented_ones():
    config = LossConfig()
    assert config.ppm_margin == 0.2
    assert config.self_distinctiveness_margin == 0.2
    assert config.locality_margin == 0.01
    assert config.locality_top_k == 10  # the released code's top-10 (docs/PAPER.md §3)
    for name in (
        "ppm_mm_weight",
        "ppm_tm_weight",
        "ppm_im_weight",
        "self_distinctiveness_weight",
        "locality_consistency_weight",
    ):
        assert getattr(config, name) == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ppm_margin = 0.3  # type: ignore[misc]


def test_loss_config_reports_every_problem_at_once():
    with pytest.raises(ValueError) as err:
        LossConfig(ppm_margin=-0.1, ppm_im_weight=math.inf, locality_top_k=0)
    text = str(err.value)
    assert "loss.ppm_margin=-0.1" in text
    assert "loss.ppm_im_weight=inf" in text
    assert "loss.locality_top_k=0" in text
    with pytest.raises(ValueError, match="locality_top_k"):
        LossConfig(locality_top_k=True)


def test_package_exports():
    assert "LossConfig" in encoder.__all__
    assert encoder.LossConfig is LossConfig
    for name in ("ppm_hinge", "self_distinctiveness", "locality_consistency", "total_loss"):
        assert name in encoder.__all__
        assert getattr(encoder, name) is globals()[name]
