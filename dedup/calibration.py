"""Threshold calibration: the lowest similarity threshold that reaches a precision target.

The pipeline flags a pair as a duplicate when ``similarity >= min_similarity``. Operators think
in precision ("9 in 10 flagged pairs must be real duplicates"), so the threshold is chosen on
labelled validation pairs as the *lowest* threshold whose precision reaches the target: the one
that keeps the most recall while meeting it. A bootstrap over the validation pairs gives a
confidence interval for that threshold, so a reader sees how firmly the data pins it down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from dedup.metrics import as_binary_labels, as_similarities, threshold_curve


class CalibrationError(ValueError):
    """No threshold reaches the precision target on the validation pairs."""


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and what it was measured on.

    Attributes:
        threshold: the lowest threshold whose precision reaches ``target_precision``.
        target_precision: the target asked for.
        precision: precision at ``threshold`` on the validation pairs (>= target).
        recall: recall at ``threshold`` on the validation pairs.
        n_pairs: labelled pairs used; ``n_positive`` of them are matches.
        ci_low, ci_high: the bootstrap confidence interval of the threshold.
        confidence: the interval's level, e.g. 0.95.
        n_bootstrap: resamples drawn; ``n_bootstrap_reached`` of them reached the target (the
            interval is over those).
        seed: the bootstrap's random seed.
    """

    threshold: float
    target_precision: float
    precision: float
    recall: float
    n_pairs: int
    n_positive: int
    ci_low: float
    ci_high: float
    confidence: float
    n_bootstrap: int
    n_bootstrap_reached: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        """Returns the fields as a JSON-ready dict."""
        return asdict(self)


def _lowest_reaching(thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray, target_precision: float) -> int | None:
    """Index of the lowest threshold whose precision reaches the target, or None."""
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1e-300), 0.0)
    # a tiny tolerance so that exactly-meeting ratios such as 9/10 >= 0.9 count
    reached = np.flatnonzero((precision >= target_precision - 1e-12) & (tp > 0))
    return int(reached[-1]) if reached.size else None  # thresholds descend: last = lowest


def calibrate(
    similarities: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    target_precision: float,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Calibration:
    """Chooses the lowest threshold whose precision on labelled pairs reaches a target.

    Precision is not monotone in the threshold; the rule takes the lowest threshold that meets
    the target anywhere, which maximises recall subject to the target. The bootstrap resamples
    the pairs with replacement ``n_bootstrap`` times, recalibrates on each resample, and reports
    the central ``confidence`` interval of the thresholds found (resamples in which no
    threshold reaches the target are counted in ``n_bootstrap_reached``'s complement).

    Args:
        similarities: [n] similarity of each labelled validation pair.
        labels: [n] 1 for a matching pair, 0 otherwise.
        target_precision: the precision to reach, in (0, 1].
        n_bootstrap: number of bootstrap resamples (0 gives an interval of the point itself).
        confidence: level of the interval, in (0, 1).
        seed: seed of the resampling.

    Returns:
        The Calibration (threshold, its precision and recall, the interval).

    Raises:
        ValueError: on bad arguments or labels.
        CalibrationError: when no threshold reaches the target on the full validation set.
    """
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision={target_precision!r} must be in (0, 1]")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    if int(n_bootstrap) < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap!r} must be >= 0")
    sims = as_similarities(similarities)
    truth = as_binary_labels(labels, sims.shape[0])
    n_positive = int(truth.sum())
    if n_positive == 0:
        raise ValueError("no pair is labelled a match; precision is undefined")
    pos, neg = truth.astype(np.float64), (~truth).astype(np.float64)

    thresholds, tp, fp = threshold_curve(sims, pos, neg)
    best = _lowest_reaching(thresholds, tp, fp, target_precision)
    if best is None:
        top = float(np.max(tp / (tp + fp)))
        raise CalibrationError(
            f"no threshold reaches precision {target_precision}; the best precision on these "
            f"{sims.size} pairs is {top:.3f}: lower the target or improve the model"
        )

    rng = np.random.default_rng(seed)
    found: list[float] = []
    for _ in range(int(n_bootstrap)):
        counts = rng.multinomial(sims.size, np.full(sims.size, 1.0 / sims.size)).astype(np.float64)
        drawn = counts > 0  # undrawn pairs must not offer their similarity as a threshold
        b_thresholds, b_tp, b_fp = threshold_curve(sims[drawn], (pos * counts)[drawn], (neg * counts)[drawn])
        b_best = _lowest_reaching(b_thresholds, b_tp, b_fp, target_precision)
        if b_best is not None:
            found.append(float(b_thresholds[b_best]))
    threshold = float(thresholds[best])
    tail = (1 - confidence) / 2
    low, high = (
        (float(np.quantile(found, tail)), float(np.quantile(found, 1 - tail))) if found else (threshold, threshold)
    )
    return Calibration(
        threshold=threshold,
        target_precision=float(target_precision),
        precision=float(tp[best] / (tp[best] + fp[best])),
        recall=float(tp[best] / n_positive),
        n_pairs=int(sims.size),
        n_positive=n_positive,
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        n_bootstrap=int(n_bootstrap),
        n_bootstrap_reached=len(found),
        seed=int(seed),
    )
