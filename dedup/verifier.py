"""The pair verifier: a calibrated match probability for each candidate pair.

Two stages inside the per-supplier search (docs/ARCHITECTURE.md, bench/README.md "Verified
matching"): a range search at a recall-oriented ``dedup.min_similarity`` gives candidates; the
verifier scores every candidate on ``dedup.features`` and the pair is kept when its probability
reaches ``dedup.min_probability``.

The model is a gradient-boosted tree ensemble (scikit-learn's ``HistGradientBoostingClassifier``
at training time, ``python -m training.fit_verifier``), stored as plain JSON and evaluated here
with numpy, so the pipeline needs neither scikit-learn nor pickle:

    raw(x)  = baseline + sum over trees of leaf_value(tree, x)
    p(x)    = sigmoid(a * raw(x) + b)        (Platt calibration on WDC valid_medium)

Each tree node sends ``x[feature] <= threshold`` left, a NaN feature to the side the node
learned (``missing_left``). The file also records what the features depend on — the encoder's
``model_version``, the lexical IDF digest and the neighbour settings — and ``Verifier`` checks
them, so a verifier is never run on similarities of a model it was not trained for.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup.features import FEATURE_NAMES, FEATURE_SCHEME

VERIFIER_FORMAT = "sspr-verifier/1"


class VerifierError(ValueError):
    """A verifier file that cannot be used (missing, malformed, or made for other inputs)."""


@dataclass(frozen=True)
class Tree:
    """One regression tree as parallel node arrays (node 0 is the root)."""

    feature: np.ndarray  # int [nodes]
    threshold: np.ndarray  # float64 [nodes]
    missing_left: np.ndarray  # bool [nodes]
    left: np.ndarray  # int [nodes]
    right: np.ndarray  # int [nodes]
    value: np.ndarray  # float64 [nodes], used at leaves
    leaf: np.ndarray  # bool [nodes]

    @classmethod
    def from_dict(cls, data: dict) -> Tree:
        """Reads a tree written by ``Tree.to_dict``."""
        return cls(
            feature=np.asarray(data["feature"], dtype=np.int64),
            threshold=np.asarray(data["threshold"], dtype=np.float64),
            missing_left=np.asarray(data["missing_left"], dtype=bool),
            left=np.asarray(data["left"], dtype=np.int64),
            right=np.asarray(data["right"], dtype=np.int64),
            value=np.asarray(data["value"], dtype=np.float64),
            leaf=np.asarray(data["leaf"], dtype=bool),
        )

    def to_dict(self) -> dict:
        """JSON-ready node arrays."""
        return {
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "missing_left": self.missing_left.tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": self.value.tolist(),
            "leaf": self.leaf.tolist(),
        }

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Leaf value per row of float64 [n, n_features]."""
        node = np.zeros(len(features), dtype=np.int64)
        rows = np.arange(len(features))
        active = ~self.leaf[node]
        while active.any():
            at = node[active]
            x = features[rows[active], self.feature[at]]
            go_left = np.where(np.isnan(x), self.missing_left[at], x <= self.threshold[at])
            node[active] = np.where(go_left, self.left[at], self.right[at])
            active = ~self.leaf[node]
        return self.value[node]


@dataclass(frozen=True)
class Verifier:
    """A trained, calibrated pair verifier (see the module docstring).

    Attributes:
        trees: the boosted trees.
        baseline: the ensemble's constant raw score.
        platt_a, platt_b: the calibration ``p = sigmoid(a * raw + b)``.
        features: the feature names the trees index, as trained.
        model_version: the encoder whose similarities it was trained on.
        lexical_idf_digest: the IDF table of its ``char_cosine`` feature.
        neighbour_min_similarity, neighbour_budget: how its neighbour lists are made.
        info: provenance (training data, calibration, operating point), JSON-ready.
        digest: sha256 of the file it came from (its version).
    """

    trees: tuple[Tree, ...]
    baseline: float
    platt_a: float
    platt_b: float
    features: tuple[str, ...]
    model_version: str
    lexical_idf_digest: str
    neighbour_min_similarity: float
    neighbour_budget: int
    info: dict
    digest: str = ""

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """The ensemble's uncalibrated score (log-odds scale) per row."""
        features = np.asarray(features, dtype=np.float64)
        raw = np.full(len(features), self.baseline, dtype=np.float64)
        for tree in self.trees:
            raw += tree.predict(features)
        return raw

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated match probability per row of float64 [n, len(FEATURE_NAMES)]."""
        if features.ndim != 2 or features.shape[1] != len(self.features):
            raise VerifierError(
                f"features have shape {features.shape}; the verifier takes {len(self.features)} columns"
            )
        return calibrated(self.raw_scores(features), self.platt_a, self.platt_b)

    def to_dict(self) -> dict:
        """The JSON document ``load_verifier`` reads."""
        return {
            "format": VERIFIER_FORMAT,
            "feature_scheme": FEATURE_SCHEME,
            "features": list(self.features),
            "model_version": self.model_version,
            "lexical_idf_digest": self.lexical_idf_digest,
            "neighbours": {"min_similarity": self.neighbour_min_similarity, "budget": self.neighbour_budget},
            "baseline": self.baseline,
            "calibration": {"method": "platt", "a": self.platt_a, "b": self.platt_b},
            "info": self.info,
            "trees": [tree.to_dict() for tree in self.trees],
        }

    def check_inputs(self, model_version: str, lexical_idf_digest: str) -> None:
        """Raises VerifierError when the pipeline's encoder differs from the training one."""
        if model_version != self.model_version:
            raise VerifierError(
                f"the verifier was trained on similarities of model_version {self.model_version}, but the "
                f"embeddings are {model_version}; retrain it (`python -m training.fit_verifier --config ...`) "
                "or set dedup.verifier = '' to pair on similarity alone"
            )
        if lexical_idf_digest != self.lexical_idf_digest:
            raise VerifierError(
                f"the verifier's char_cosine used the IDF table {self.lexical_idf_digest}, but "
                f"encoder.lexical_idf is {lexical_idf_digest}; retrain it with `python -m training.fit_verifier`"
            )


def calibrated(raw: np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a * raw + b)``, computed without overflow."""
    z = a * np.asarray(raw, dtype=np.float64) + b
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


def fit_platt(raw: np.ndarray, labels: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Fits ``p = sigmoid(a * raw + b)`` to labels by Newton's method (Platt's smoothed targets).

    Args:
        raw: float [n] raw scores.
        labels: bool/int [n], 1 = match.
        iterations: Newton steps at most.

    Returns:
        ``(a, b)``.

    Raises:
        ValueError: when both labels are not present.
    """
    raw = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Platt calibration needs both matches and non-matches")
    # Platt's targets keep a perfectly separated set from driving a to infinity
    target = np.where(labels, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = calibrated(raw, a, b)
        weight = np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.sum((p - target) * raw), np.sum(p - target)])
        hess = np.array([[np.sum(weight * raw * raw), np.sum(weight * raw)], [np.sum(weight * raw), np.sum(weight)]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def load_verifier(path: str | Path) -> Verifier:
    """Reads a verifier file (``training.fit_verifier`` writes it).

    Raises:
        VerifierError: when the file is missing, malformed or made for another feature set;
            the message says what to do.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        document = json.loads(data)
    except (OSError, ValueError) as exc:
        raise VerifierError(
            f"dedup.verifier={str(path)!r} cannot be read ({exc}); write it with "
            "`python -m training.fit_verifier --config ...`, or set dedup.verifier = '' to pair on similarity alone"
        ) from exc
    if not isinstance(document, dict) or document.get("format") != VERIFIER_FORMAT:
        raise VerifierError(f"{path}: not a {VERIFIER_FORMAT} file")
    if document.get("feature_scheme") != FEATURE_SCHEME or tuple(document.get("features", ())) != FEATURE_NAMES:
        raise VerifierError(
            f"{path}: made for features {document.get('feature_scheme')!r}, this code computes {FEATURE_SCHEME!r}; "
            "retrain it with `python -m training.fit_verifier`"
        )
    try:
        neighbours = document["neighbours"]
        calibration = document["calibration"]
        verifier = Verifier(
            trees=tuple(Tree.from_dict(tree) for tree in document["trees"]),
            baseline=float(document["baseline"]),
            platt_a=float(calibration["a"]),
            platt_b=float(calibration["b"]),
            features=tuple(document["features"]),
            model_version=str(document["model_version"]),
            lexical_idf_digest=str(document["lexical_idf_digest"]),
            neighbour_min_similarity=float(neighbours["min_similarity"]),
            neighbour_budget=int(neighbours["budget"]),
            info=dict(document.get("info", {})),
            digest=hashlib.sha256(data).hexdigest(),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerifierError(f"{path}: malformed verifier file ({exc!r}); retrain it") from exc
    if not math.isfinite(verifier.platt_a) or not math.isfinite(verifier.platt_b):
        raise VerifierError(f"{path}: calibration is not finite; retrain it")
    return verifier


def save_verifier(verifier: Verifier, path: str | Path) -> None:
    """Writes a verifier as sorted, indented JSON, atomically (same model -> same bytes)."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(verifier.to_dict(), indent=1, sort_keys=True) + "\n")
    partial.replace(target)
