"""The eSSPR training losses in PyTorch: PPM hinge, self-distinctiveness, locality consistency.

These follow the authors' released TensorFlow code as docs/PAPER.md §3 reads it
(``benchen4395/esspr_alibaba.com``, ``model_implement_details/loss.py``). A batch holds B
positive pairs, trigger row ``r`` with offer row ``r``. Every other offer in the batch is a
negative (in-batch negatives only, no temperature, not InfoNCE). All similarities are cosine:
each input row is L2-normalised inside, with its norm floored at 1e-12 as in the released code,
so unnormalised encoder outputs may be passed, and an all-zero row gives similarity 0 (and
finite gradients) instead of NaN.

The three losses (docs/PAPER.md §3):

* **PPM hinge** (``hinge_batch_loss``). ``S = norm(Q) . norm(O)^T`` with Q the queries and O
  the targets, both [B, dim]. Per query row::

      loss_r = (1 / B) * sum_j max(0, S[r, j] - S[r, r] + margin * (1 - delta_rj))

  The mean runs over all B columns, the diagonal included. The diagonal term is always
  ``max(0, 0) = 0``, so it adds nothing but still counts in the 1/B. One direction only (query
  rows), not symmetric. ``total_loss`` applies it m->m, t->m and i->m: the target is always
  the offer's fused m.
* **Self-distinctiveness** (PDC, ``self_distinctiveness_loss``). The same hinge on
  ``S = norm(view) . norm(full)^T``: rows are a view of each trigger, columns the trigger's full
  embedding. The positive is the same product's full embedding, the negatives the other
  products'. The released function also takes the offer, normalises it and never uses it, so
  it is left out here.
* **Locality consistency** (``locality_consistency_loss``). With ``D = norm(full) . norm(O)^T``
  and ``D' = norm(view) . norm(O)^T`` (both against the same offers ``O``), per trigger row::

      loss_r = (1 / k) * sum_{j in topk_j D[r, j]} max(0, (D[r, j] - D'[r, j])^2 - margin)

  The top-k columns are chosen on the full view's D. The released code fixes k = 10 (so it
  needs B >= 10); here k is a parameter and is clamped to the number of offers. Gradients flow
  through both D and D', as in the released code (no stop-gradient). Ties in the top-k are
  broken by ``torch.topk``.

Choices where docs/PAPER.md is silent ([NF] in §3):

* What "trigger_trans" is. ``total_loss`` uses the trigger's text-only ``t`` and image-only
  ``i`` vectors as the views of its fused ``m``, the same masked-modality views the PPM terms
  use. This is docs/PAPER.md's own guess.
* Listings without a title or an image. Each loss takes an optional boolean mask over its
  query/view rows. A masked row adds no loss term: the loss is the mean over unmasked rows
  only. Masked rows still serve as targets/negatives for the other rows, because the targets
  are fused ``m`` vectors, which every listing has. If every row is masked, the term is 0,
  not NaN, and still has a graph, so ``backward()`` works and gives zero gradients.
* How the per-row losses are reduced. The released functions return per-row losses; here
  each loss returns their mean over the (unmasked) rows.
* Margins, weights: see ``encoder.config.LossConfig``.

Example:
    >>> import torch
    >>> from encoder.config import LossConfig
    >>> from encoder.loss import total_loss
    >>> g = torch.Generator().manual_seed(0)
    >>> trigger = {k: torch.randn(4, 8, generator=g) for k in ("m", "t", "i")}
    >>> trigger["has_image"] = torch.tensor([True, True, False, True])
    >>> offer = {"m": torch.randn(4, 8, generator=g)}
    >>> loss, parts = total_loss(trigger, offer, LossConfig())
    >>> sorted(parts)[:2]
    ['locality_consistency_i', 'locality_consistency_t']
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from encoder.config import LossConfig

# Floor of the L2 norm before dividing, as in the released code (tf.maximum(1e-12, norm)).
_NORM_FLOOR = 1e-12

# Names of the parts ``total_loss`` returns, in order.
LOSS_PARTS: tuple[str, ...] = (
    "ppm_mm",
    "ppm_tm",
    "ppm_im",
    "self_distinctiveness_t",
    "self_distinctiveness_i",
    "locality_consistency_t",
    "locality_consistency_i",
)


def ppm_hinge(
    queries: torch.Tensor,
    targets: torch.Tensor,
    margin: float,
    query_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Product-to-product matching hinge loss, in-batch negatives (docs/PAPER.md §3, PPM).

    ``S = norm(queries) . norm(targets)^T``; query row r's positive is target r and every other
    target is a negative. Per row, ``mean_j max(0, S[r, j] - S[r, r] + margin * (1 - delta_rj))``
    over all B columns, the diagonal (always 0) included. Returns the mean over the unmasked rows.

    Args:
        queries: float [B, dim], e.g. the trigger's m, t or i; need not be normalised.
        targets: float [B, dim], the offers' m, row-aligned with ``queries``.
        margin: finite float, the required gap between the positive and each negative.
        query_mask: optional bool [B]; False rows (a listing without the query's modality) add
            no term. They stay in as targets.

    Returns:
        A 0-dim tensor; 0 when B == 1 (only the diagonal) or every row is masked.

    Raises:
        ValueError: on non-2-D inputs, a batch or width mismatch, an empty batch, a bad mask or
            a non-finite margin.
    """
    _check_pair("queries", queries, "targets", targets, same_rows=True)
    _check_margin(margin)
    mask = _check_mask("query_mask", query_mask, queries)
    similarity = _normalize(queries) @ _normalize(targets).T  # [B, B]
    return _masked_mean(_hinge_rows(similarity, margin), mask)


def self_distinctiveness(
    view: torch.Tensor,
    full: torch.Tensor,
    margin: float,
    view_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Product self-distinctiveness hinge loss (docs/PAPER.md §3, PDC).

    The PPM hinge on ``S = norm(view) . norm(full)^T``: rows are views, columns full embeddings
    of the same B products. Row r's positive is ``full[r]`` (the same product), the negatives
    the other products' full embeddings.

    Args:
        view: float [B, dim], another view of each trigger (``total_loss`` passes t or i).
        full: float [B, dim], the trigger's full (fused m) embedding, row-aligned with ``view``.
        margin: finite float, the required gap between the positive and each negative.
        view_mask: optional bool [B]; False rows (the view is missing) add no term.

    Returns:
        A 0-dim tensor; 0 when B == 1 or every row is masked.

    Raises:
        ValueError: as ``ppm_hinge``.
    """
    _check_pair("view", view, "full", full, same_rows=True)
    _check_margin(margin)
    mask = _check_mask("view_mask", view_mask, view)
    similarity = _normalize(view) @ _normalize(full).T  # [B, B], rows views, columns full
    return _masked_mean(_hinge_rows(similarity, margin), mask)


def locality_consistency(
    full: torch.Tensor,
    view: torch.Tensor,
    offers: torch.Tensor,
    k: int,
    margin: float,
    view_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Locality consistency loss (docs/PAPER.md §3, ``locality_consistency_loss``).

    ``D = norm(full) . norm(offers)^T`` and ``D' = norm(view) . norm(offers)^T``. For each
    trigger row, take the k offers most similar to the *full* embedding (top-k of D's row) and
    average ``max(0, (D - D')^2 - margin)`` over them. The view then keeps the full embedding's
    neighbourhood.

    Args:
        full: float [B, dim], the trigger's full (fused m) embedding.
        view: float [B, dim], another view of each trigger (``total_loss`` passes t or i).
        offers: float [N, dim], the offers' m (N == B in training; any N >= 1 works, since no
            positive is used).
        k: int >= 1, neighbours per row; the released code uses 10. Clamped to N, so a batch
            smaller than k compares against every offer.
        margin: finite float, the squared similarity difference that is tolerated.
        view_mask: optional bool [B]; False rows (the view is missing) add no term.

    Returns:
        A 0-dim tensor; 0 when every row is masked.

    Raises:
        ValueError: on non-2-D inputs, a shape mismatch, an empty batch, a bad mask, k < 1 or a
            non-finite margin.
    """
    _check_pair("full", full, "view", view, same_rows=True)
    _check_pair("full", full, "offers", offers, same_rows=False)
    _check_margin(margin)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1 (it is clamped to the offer count)")
    mask = _check_mask("view_mask", view_mask, view)
    offers_n = _normalize(offers)  # [N, dim]
    similarity_full = _normalize(full) @ offers_n.T  # [B, N], D
    similarity_view = _normalize(view) @ offers_n.T  # [B, N], D'
    k = min(k, offers.shape[0])
    neighbours = similarity_full.detach().topk(k, dim=1).indices  # [B, k], chosen on D
    squared_gap = (similarity_full - similarity_view).square().gather(1, neighbours)  # [B, k]
    per_row = (squared_gap - margin).clamp_min(0).mean(dim=1)  # [B]
    return _masked_mean(per_row, mask)


def total_loss(
    trigger: object, offer: object, config: LossConfig | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of every eSSPR loss term over a batch of (trigger, offer) pairs.

    Terms (see the module docstring; weights and margins from ``config``):

    * ``ppm_mm``, ``ppm_tm``, ``ppm_im``: ``ppm_hinge`` of the trigger's m, t, i against the
      offer's m (docs/PAPER.md §3: "applied m->m, t->m and i->m").
    * ``self_distinctiveness_t`` / ``_i``: ``self_distinctiveness(view=t or i, full=m)`` of the
      trigger, both weighted by ``self_distinctiveness_weight``.
    * ``locality_consistency_t`` / ``_i``: ``locality_consistency(full=trigger m, view=t or i,
      offers=offer m)``, both weighted by ``locality_consistency_weight``.

    The trigger's optional ``has_text`` / ``has_image`` masks drop its rows from every t / i
    term: a listing with no image adds no i->m, no self-distinctiveness_i and no
    locality_consistency_i term. Only the offer's ``m`` is used (the target is always the fused
    vector).

    Args:
        trigger: a mapping or an object (e.g. a dataclass) with ``m``, ``t``, ``i``: float
            [B, dim] tensors, need not be normalised. Optional ``has_text`` / ``has_image``:
            bool [B] (tensor or numpy), None or absent meaning all True.
        offer: a mapping or an object with ``m``: float [B, dim], row r the positive of trigger
            row r.
        config: margins, weights and top-k; ``LossConfig()`` when None.

    Returns:
        ``(loss, parts)``: ``loss`` is the 0-dim weighted sum to call ``backward()`` on;
        ``parts`` maps each name in ``LOSS_PARTS`` to its *unweighted*, detached 0-dim value,
        for logging.

    Raises:
        ValueError: when a vector is missing, shapes disagree, or a mask is not bool [B].
    """
    config = LossConfig() if config is None else config
    m = _field(trigger, "m", "trigger")  # [B, dim]
    t = _field(trigger, "t", "trigger")  # [B, dim]
    i = _field(trigger, "i", "trigger")  # [B, dim]
    offer_m = _field(offer, "m", "offer")  # [B, dim]
    has_text = _field(trigger, "has_text", "trigger", required=False)  # bool [B] or None
    has_image = _field(trigger, "has_image", "trigger", required=False)  # bool [B] or None

    weighted = [
        ("ppm_mm", config.ppm_mm_weight, ppm_hinge(m, offer_m, config.ppm_margin)),
        ("ppm_tm", config.ppm_tm_weight, ppm_hinge(t, offer_m, config.ppm_margin, has_text)),
        ("ppm_im", config.ppm_im_weight, ppm_hinge(i, offer_m, config.ppm_margin, has_image)),
    ]
    for suffix, view, mask in (("t", t, has_text), ("i", i, has_image)):
        weighted.append(
            (
                f"self_distinctiveness_{suffix}",
                config.self_distinctiveness_weight,
                self_distinctiveness(view, m, config.self_distinctiveness_margin, mask),
            )
        )
    for suffix, view, mask in (("t", t, has_text), ("i", i, has_image)):
        weighted.append(
            (
                f"locality_consistency_{suffix}",
                config.locality_consistency_weight,
                locality_consistency(m, view, offer_m, config.locality_top_k, config.locality_margin, mask),
            )
        )
    loss = sum(weight * part for _, weight, part in weighted)
    parts = {name: part.detach() for name, _, part in weighted}
    return loss, parts


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by max(L2 norm, 1e-12); an all-zero row stays zero."""
    return F.normalize(x, p=2.0, dim=1, eps=_NORM_FLOOR)  # [B, dim]


def _hinge_rows(similarity: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-row hinge of a square similarity matrix whose diagonal holds the positives."""
    rows = similarity.shape[0]
    positive = similarity.diagonal().unsqueeze(1)  # [B, 1]
    off_diagonal = 1.0 - torch.eye(rows, dtype=similarity.dtype, device=similarity.device)
    hinge = (similarity - positive + margin * off_diagonal).clamp_min(0)  # [B, B]
    return hinge.mean(dim=1)  # [B]; the mean counts the diagonal's zero


def _masked_mean(per_row: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the rows where mask is True; 0 (with a graph) when no row is True."""
    if mask is None:
        return per_row.mean()
    # torch.where, not boolean indexing: no host sync, and zero gradient to masked rows.
    kept = torch.where(mask, per_row, torch.zeros_like(per_row))  # [B]
    return kept.sum() / mask.sum().clamp_min(1)


def _check_pair(name_a: str, a: object, name_b: str, b: object, *, same_rows: bool) -> None:
    """Raises ValueError unless a and b are non-empty 2-D tensors of equal width (and rows)."""
    for name, x in ((name_a, a), (name_b, b)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [batch, dim], got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D [batch, dim], got shape {tuple(x.shape)}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{name} must have at least one row and column, got {tuple(x.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same width; got {tuple(a.shape)} and {tuple(b.shape)}")
    if same_rows and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must be row-aligned (row r of one pairs with row r of the "
            f"other); got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_margin(margin: object) -> None:
    """Raises ValueError unless margin is a finite real number."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"margin={margin!r} must be a finite number")


def _check_mask(name: str, mask: object, rows_of: torch.Tensor) -> torch.Tensor | None:
    """Returns the mask as a bool tensor on rows_of's device, or None; ValueError if invalid."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=rows_of.device)
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be boolean, got dtype {mask.dtype}")
    if mask.shape != (rows_of.shape[0],):
        raise ValueError(f"{name} must have shape ({rows_of.shape[0]},), one flag per row; got {tuple(mask.shape)}")
    return mask


def _field(outputs: object, name: str, side: str, *, required: bool = True) -> object:
    """Reads outputs[name] from a mapping or outputs.name from an object."""
    if isinstance(outputs, Mapping):
        value = outputs.get(name)
    else:
        value = getattr(outputs, name, None)
    if value is None and required:
        raise ValueError(
            f"{side} outputs have no {name!r}; pass a mapping or object with m, t, i tensors "
            "[batch, dim] (the offer needs only m)"
        )
    return value
