"""How listing image bytes are shown: as re-encoded JPEG thumbnails (the review page and the review app).

Like ``schemas.uris`` (which ``image_uri`` values may be read or shown), a rule for untrusted input.
"""

from __future__ import annotations

import io

THUMBNAIL_PX = 96


def thumbnail_jpeg(data: bytes, size: int = THUMBNAIL_PX) -> bytes | None:
    """Returns a JPEG thumbnail at most ``size`` pixels a side, or None if the bytes are no image.

    The image is decoded and re-encoded, so whatever the listing's bytes carried (an SVG with
    script, a polyglot file) never reaches the browser as it was.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a broken image just has no thumbnail
        return None
    return out.getvalue()
