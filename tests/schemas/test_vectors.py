"""Stored vectors (schemas/vectors.py): float16 bytes that upcast to what the search compares."""

from __future__ import annotations

import numpy as np
import pytest

from encoder.config import KIND_DIMS, EncoderConfig, stored_dim
from schemas.vectors import (
    VECTOR_BUDGET_BYTES,
    pack_vectors,
    stored_bytes,
    unpack_vectors,
    vector_norms,
)


def _units(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_round_trip_keeps_each_component_within_float16_rounding():
    x = _units(50, 256)
    packed = pack_vectors(x)
    assert [len(v) for v in packed] == [512] * 50
    back = unpack_vectors(packed, normalise=False)
    assert back.dtype == np.float32 and back.shape == x.shape
    # float16 has an 11-bit significand: relative error <= 2**-11 on normal values; tiny values
    # (below 2**-14, subnormal) get an absolute error <= 2**-25
    err = np.abs(back - x)
    assert np.all(err <= np.maximum(np.abs(x) * 2.0**-11, 2.0**-25))


def test_similarities_of_unpacked_vectors_are_within_a_thousandth_of_float32():
    x = _units(200, 256, seed=1)
    got = unpack_vectors(pack_vectors(x)) @ unpack_vectors(pack_vectors(x)).T
    assert np.abs(got - x @ x.T).max() < 1e-3
    assert np.allclose(np.linalg.norm(unpack_vectors(pack_vectors(x)), axis=1), 1.0, atol=1e-6)


def test_absent_vectors_unpack_as_zero_rows_and_zero_rows_stay_zero():
    zero = pack_vectors(np.zeros((1, 4), dtype=np.float32))[0]
    out = unpack_vectors([None, zero, pack_vectors(np.array([[0.6, 0.8, 0, 0]]))[0]])
    assert out.shape == (3, 4)
    assert not out[0].any() and not out[1].any()
    assert np.allclose(out[2], [0.6, 0.8, 0, 0], atol=1e-3)
    assert unpack_vectors([None, None]).shape == (2, 0)


def test_a_vector_of_another_width_is_an_error_that_says_to_reembed():
    values = pack_vectors(_units(2, 8)) + pack_vectors(_units(1, 4))
    with pytest.raises(ValueError, match=r"stored vector 2 has 8 bytes, expected 16 .*re-embed"):
        unpack_vectors(values)
    with pytest.raises(ValueError, match="expected 32"):
        unpack_vectors(values[:1], dim=16)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e6])
def test_values_float16_cannot_hold_are_refused(bad):
    x = _units(2, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite|beyond float16"):
        pack_vectors(x)
    with pytest.raises(ValueError, match="2-D"):
        pack_vectors(x[0])


def test_norms_as_stored_flag_absent_and_malformed_values():
    x = _units(2, 6) * np.array([[1.0], [0.5]], dtype=np.float32)
    norms = vector_norms([*pack_vectors(x), None, b"\x00\x3c\x00"])
    assert norms[:2] == pytest.approx([1.0, 0.5], abs=1e-3)
    assert np.isnan(norms[2]) and np.isnan(norms[3])


def test_the_shipped_model_fits_the_vector_budget_and_the_hybrid_stores_only_its_neural_part():
    sspr = EncoderConfig(kind="sspr", lexical_weight=0.2, lexical_buckets=2048)
    assert stored_dim(sspr) == KIND_DIMS["sspr"] == 256
    assert stored_bytes(stored_dim(sspr)) == 1536 <= VECTOR_BUDGET_BYTES
    # the zero-shot baseline (1,664 wide) is over the budget: recorded, not hidden
    assert stored_bytes(stored_dim(EncoderConfig(kind="zero-shot"))) > VECTOR_BUDGET_BYTES
