"""embed reads an image_uri only where validation.image_uri_* allow, with the real zero-shot encoder.

Runs ``embed_batches`` (the mapInPandas body) on a pandas batch directly: no Spark session, the
same code path the executors run.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from config import ValidationConfig
from encoder.config import EncoderConfig
from jobs import embed

ENCODER = EncoderConfig(device="cpu", batch_size=8, num_threads=1)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """An allowed folder with a small PNG in it, and a secret file next to it."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (48, 48), (30, 120, 200)).save(root / "mug.png", format="PNG")
    (tmp_path / "secret.png").write_bytes((root / "mug.png").read_bytes())  # readable, outside the root
    return root


def _batch(uris: dict[str, str]) -> pd.DataFrame:
    n = len(uris)
    return pd.DataFrame(
        {
            "listing_id": list(uris),
            "supplier_id": ["s1"] * n,
            "updated_at": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * n,
            "title": [f"blue mug {k}" for k in range(n)],
            "image": [None] * n,
            "image_uri": list(uris.values()),
        }
    )


def test_only_allowed_image_uris_are_read(image_root, caplog):
    uris = {
        "allowed": str(image_root / "mug.png"),
        "allowed_file_url": f"file://{image_root}/mug.png",
        "javascript": "javascript:alert(1)",
        "passwd": "/etc/passwd",
        "dotdot": f"{image_root}/../secret.png",
        "missing": str(image_root / "gone.png"),
    }
    validation = ValidationConfig(image_uri_roots=(str(image_root),))
    with caplog.at_level(logging.INFO, logger="jobs.embed"):
        out = pd.concat(list(embed.embed_batches(iter([_batch(uris)]), ENCODER, validation)))
    rows = out.set_index("listing_id")
    for listing_id in ("allowed", "allowed_file_url"):
        assert rows.loc[listing_id, "has_image"], rows.loc[listing_id, "image_error"]
        assert rows.loc[listing_id, "image_error"] is None
    for listing_id in ("javascript", "passwd", "dotdot"):
        assert not rows.loc[listing_id, "has_image"]
        assert rows.loc[listing_id, "has_text"]  # embedded text-only
        assert rows.loc[listing_id, "image_error"].startswith("image_uri_not_allowed: "), listing_id
    assert rows.loc["missing", "image_error"].startswith("image_uri_unreadable: FileNotFoundError")
    assert all(rows["emb_m"].notna())
    assert "3 image_uri not allowed" in "\n".join(caplog.messages)


def test_without_roots_no_local_file_is_read(image_root):
    out = pd.concat(
        list(embed.embed_batches(iter([_batch({"a": str(image_root / "mug.png")})]), ENCODER, ValidationConfig()))
    )
    assert not out["has_image"].iloc[0]
    assert out["image_error"].iloc[0] == (
        f"image_uri_not_allowed: {str(image_root / 'mug.png')!r} is not inside validation.image_uri_roots"
    )


def test_read_image_uri_does_not_open_a_refused_uri(image_root, monkeypatch):
    import fsspec

    def refuse(*args, **kwargs):
        raise AssertionError("opened a refused uri")

    monkeypatch.setattr(fsspec, "open", refuse)
    monkeypatch.setattr("builtins.open", refuse)
    validation = ValidationConfig(image_uri_roots=(str(image_root),))
    for uri in ("/etc/passwd", "http://169.254.169.254/latest", "nosuchprotocol://bucket/x", "javascript:alert(1)"):
        data, error = embed.read_image_uri(uri, validation)
        assert data is None and error.startswith("image_uri_not_allowed: "), uri
