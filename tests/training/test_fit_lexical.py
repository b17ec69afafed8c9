"""The fit_lexical command: the shipped IDF table is what it makes from the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.fit_lexical import main

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets"
CONFIG = ROOT / "conf" / "sspr.toml"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present: the shipped IDF table cannot be rebuilt")
def test_shipped_idf_table_is_what_fit_lexical_makes(tmp_path):
    out = tmp_path / "idf.npy"
    # the bucket count comes from the config's encoder.lexical_buckets, as the encoder reads it
    assert main(["--config", str(CONFIG), "--shared", str(SHARED), "--out", str(out)]) == 0
    assert out.read_bytes() == (ROOT / "encoder" / "weights" / "lexical-idf.npy").read_bytes()


def test_fit_lexical_without_datasets_exits_2(tmp_path):
    assert main(["--config", str(CONFIG), "--shared", str(tmp_path), "--out", str(tmp_path / "idf.npy")]) == 2
    assert not (tmp_path / "idf.npy").exists()
