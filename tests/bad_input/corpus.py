"""A generated corpus of bad listings input: one named case per bad input, with its expected outcome.

    python -m tests.bad_input.corpus /tmp/bad-input            # the corpus and expected.json
    python -m tests.bad_input.corpus /tmp/bad-input --scale    # plus the 200,000-listing supplier

Everything is generated in code (images with PIL in memory, tables with pyarrow) and is
deterministic: fixed timestamps, fixed seeds, no clock. ``build_corpus(root)`` writes
``root/listings/dt=YYYY-MM-DD/...`` (the listings contract, ``schemas.tables.LISTINGS``, plus the odd
files), ``root/images/`` (files ``image_uri`` points at) and ``root/expected.json``, and returns the
cases. ``build_scale_day(root)`` adds the one-supplier scale day; it is separate because it is
validate-only (embedding 200,000 listings on CPU takes hours, so no test embeds it). The files are
the same bytes on every call with the same ``root`` (``image_uri`` values are paths under it).

Each case is a dict:

* ``case``: its name; ``day``: the run date whose folder holds it; ``listing_id``; ``title`` (rows
  whose id is null or blank are found by their title);
* ``expect``, one of:

  - ``"quarantine"``: validate puts ``count`` (default 1) of the case's rows into ``quarantine``
    under ``rule``; ``detail`` is a fragment of their ``detail``. ``kept_price``: the price of the
    row kept in ``listings`` (duplicates); without it no row of the listing is kept;
  - ``"embedded"``: validated, then embedded with ``has_text`` / ``has_image``; ``image_error`` is a
    prefix of the row's ``image_error`` (None: no error);
  - ``"skipped"``: validated, then embed writes no vectors, for ``reason`` ``not_embeddable`` or
    ``is_deleted``;
  - ``"updated"``: validated and embedded on a later day; the catalogue keeps the later version
    (``kept_price``, ``title``);
  - ``"empty"``: the day has no rows: validate succeeds with zero rows and says so (``message``);
  - ``"error"``: validate stops before writing anything, with a message that contains every
    fragment of ``message`` (the file and the column);
  - ``"counts"``: the scale day: ``read``, ``validated`` and ``quarantined`` (rule -> rows).

The row cases run with ``CONFIG_OVERRIDES`` (``validation.max_title_chars = 2000``, not the default
1000), so the cases at and over the limit also show the configured value reaches the executors, and
with ``validation.image_uri_roots`` = ``root/images`` (``image_uri_roots(root)``), so the image_uri
cases read files there and are refused anywhere else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from schemas.tables import LISTINGS

UTC = dt.UTC
SUPPLIER = "s-corpus"
SEED = 20310101

ROWS_DAY = "2031-01-01"  # row-level cases: ids, titles, duplicates, images, image_uri, file variants
UPDATE_DAY = "2031-01-02"  # ids from ROWS_DAY again: an update and a deletion
EMPTY_FOLDER_DAY = "2031-01-03"  # the folder holds only writer side files
ABSENT_DAY = "2031-01-04"  # no folder at all
ZERO_ROWS_DAY = "2031-01-05"  # one valid Parquet file with zero rows
NOT_PARQUET_DAY = "2031-01-06"  # a CSV and a text file beside a good Parquet file
SUBFOLDER_DAY = "2031-01-07"  # a nested folder of Parquet files
MISSING_COLUMNS_DAY = "2031-01-08"  # required columns missing
WRONG_TYPES_DAY = "2031-01-09"  # columns Spark cannot read as the contract's types
UNREADABLE_DAY = "2031-01-10"  # *.parquet files that are not Parquet
SCALE_DAY = "2031-02-01"  # one supplier with 200,000 listings (build_scale_day)

MAX_TITLE_CHARS = 2000
CONFIG_OVERRIDES = {"validation.max_title_chars": str(MAX_TITLE_CHARS)}
"""Config the corpus is run with (``--set`` flags), besides ``image_uri_roots``."""


def image_uri_roots(root: Path) -> dict[str, str]:
    """Returns the ``--set`` flag that lets embed read the corpus's ``root/images`` folder."""
    return {"validation.image_uri_roots": str(root / "images")}


SCALE_LISTINGS = 200_000

# Titles in many scripts, with emoji and other Unicode oddities: each must validate and embed.
SCRIPT_TITLES: dict[str, str] = {
    "latin_diacritics": "Crème brûlée Förmchen aus Porzellan, 6 Stück – ø 10 cm",
    "cyrillic": "Смартфон Samsung Galaxy A54 128 ГБ чёрный",
    "greek": "Κούπα καφέ κεραμική 350ml λευκή",
    "arabic_rtl": "هاتف سامسونج جالاكسي ١٢٨ جيجابايت أسود",
    "hebrew_rtl": "כוס קפה קרמית 350 מ״ל לבנה",
    "mixed_rtl_ltr": "iPhone 12 غطاء حماية سيليكون Silicone Case",
    "devanagari": "स्मार्टफोन सैमसंग गैलेक्सी 128 जीबी काला",
    "thai": "สมาร์ทโฟน ซัมซุง กาแลคซี่ 128GB สีดำ",
    "chinese": "三星 Galaxy 手机 128GB 黑色 全网通",
    "japanese": "サムスン ギャラクシー スマホ 128GB ブラック",
    "korean": "삼성 갤럭시 스마트폰 128GB 블랙",
    "georgian": "მობილური ტელეფონი სამსუნგი",
    "amharic": "ሳምሰንግ ሞባይል ስልክ",
    "emoji_only": "🔥🔥🔥",
    "emoji_only_other": "🎁🎄🎅",
    "emoji_mixed": "Phone case 📱 with glitter ✨ — pink 💖",
    "emoji_zwj_family_and_flag": "👩‍👩‍👧‍👦 family mug 🇯🇵 edition",
    "emoji_skin_tone_modifiers": "👍🏽 thumbs-up keychain 👍🏿",
    "combining_marks": "Z̷a̴l̸g̵o̶ text t-shirt, cafe\u0301 edition",
    "fullwidth_latin": "ＳＡＭＳＵＮＧ　Ｇａｌａｘｙ　１２８ＧＢ",
    "math_alphanumerics": "𝐁𝐨𝐥𝐝 𝓈𝒸𝓇𝒾𝓅𝓉 phone case",
    "control_chars_inside": "USB\x00 cable\x07 2m\x1b black",
    "astral_cjk_ext_b": "𠀋𠂢 brush set",
}

_INVISIBLE_ONLY = "\u200b\u200d\u2060\ufe0f\ufeff"
_WHITESPACE_ONLY = " \t\n\u00a0\u3000\u2003"


def _at(day: str, hour: int = 1) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def _row(
    listing_id: str | None,
    day: str = ROWS_DAY,
    *,
    title: str | None = "plain title",
    supplier_id: str | None = SUPPLIER,
    hour: int = 1,
    updated_at: Any = "default",
    **extra: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in LISTINGS.names}
    row.update(
        listing_id=listing_id,
        supplier_id=supplier_id,
        title=title,
        updated_at=_at(day, hour) if updated_at == "default" else updated_at,
        is_deleted=False,
    )
    row.update(extra)
    return row


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _listings_table(rows: list[dict[str, Any]], raw_strings: dict[tuple[int, str], bytes] | None = None) -> pa.Table:
    """Rows in the contract's schema; ``raw_strings`` puts bytes that are not UTF-8 into string cells."""
    table = pa.Table.from_pylist(rows, schema=LISTINGS)
    for column in sorted({c for _, c in raw_strings or {}}):
        values = [v.encode() if isinstance(v, str) else None for v in table.column(column).to_pylist()]
        for (index, name), raw in (raw_strings or {}).items():
            if name == column:
                values[index] = raw
        # view() reinterprets the bytes without validating them, as a careless writer would.
        array = pa.array(values, pa.binary()).view(pa.string())
        table = table.set_column(LISTINGS.get_field_index(column), LISTINGS.field(column), array)
    return table


# --------------------------------------------------------------------------- images
def _gradient(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 255 // max(width + height - 2, 1)],
        axis=-1,
    ).astype(np.uint8)  # [h, w, 3]


def _save(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _jpeg(width: int = 96, height: int = 64) -> bytes:
    return _save(Image.fromarray(_gradient(width, height), "RGB"), "JPEG", quality=90)


def _png(width: int = 96, height: int = 64) -> bytes:
    return _save(Image.fromarray(_gradient(width, height), "RGB"), "PNG")


def _huge_png(width: int, height: int) -> bytes:
    """A real, fully valid 1-bit PNG of width x height: a few KB, because it is all one colour.

    Decoding it would need width*height pixels of memory; the decoder must refuse it from the
    header (``encoder.image.decode_image``: ``max_pixels``, or PIL's decompression-bomb check).
    """
    return _save(Image.new("1", (width, height), 1), "PNG")


def image_bytes() -> dict[str, bytes]:
    """The images of the image cases, by case name (deterministic)."""
    rng = np.random.default_rng(SEED)
    jpeg, png = _jpeg(), _png()
    gray16 = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 20).astype(np.uint16)
    rgba = np.dstack([_gradient(64, 48), np.full((48, 64), 128, np.uint8)])
    frames = [Image.fromarray(np.full((32, 32, 3), c, np.uint8), "RGB") for c in (0, 120, 240)]
    palette = Image.fromarray(_gradient(48, 32), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    return {
        "image_corrupt": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "image_html_error_page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "image_truncated_jpeg": jpeg[: len(jpeg) // 2],
        "image_truncated_png": png[: len(png) // 2],
        "image_zero_bytes": b"",
        "image_20000x20000": _huge_png(20_000, 20_000),
        "image_over_max_pixels": _huge_png(8_000, 6_000),  # 48 MP: over the 40 MP limit, under PIL's
        "image_cmyk_jpeg": _save(Image.fromarray(_gradient(64, 48), "RGB").convert("CMYK"), "JPEG"),
        "image_16bit_png": _save(Image.fromarray(gray16), "PNG"),  # mode I;16
        "image_animated_gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "image_animated_png": _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100),
        "image_rgba_png": _save(Image.fromarray(rgba, "RGBA"), "PNG"),
        "image_la_png": _save(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG"),
        "image_palette_transparency": _save(palette, "PNG", transparency=0),
        "image_webp": _save(Image.fromarray(_gradient(64, 48), "RGB"), "WEBP", quality=80),
        "image_plain_jpeg": jpeg,
    }


# --------------------------------------------------------------------------- the corpus
def _rows_day(root: Path, cases: list[dict[str, Any]]) -> None:
    """ROWS_DAY: every row-level case, spread over files that differ in layout but all read."""
    day = root / "listings" / f"dt={ROWS_DAY}"
    rows: list[dict[str, Any]] = []
    raw_strings: dict[tuple[int, str], bytes] = {}

    def add(case: str, expect: dict[str, Any], *case_rows: dict[str, Any]) -> None:
        rows.extend(case_rows)
        first = case_rows[0]
        cases.append(
            {"case": case, "day": ROWS_DAY, "listing_id": first["listing_id"], "title": first["title"], **expect}
        )

    embedded_text = {"expect": "embedded", "has_text": True, "has_image": False, "image_error": None}
    add("ok_plain", embedded_text, _row("ok_plain", title="Stainless steel water bottle 750ml"))

    # ids, suppliers, timestamps
    add(
        "listing_id_null",
        {"expect": "quarantine", "rule": "listing_id_not_null"},
        _row(None, title="case listing_id_null"),
    )
    add(
        "listing_id_blank",
        {"expect": "quarantine", "rule": "listing_id_not_blank"},
        _row(" \t ", title="case listing_id_blank"),
    )
    add(
        "supplier_id_null",
        {"expect": "quarantine", "rule": "supplier_id_not_null"},
        _row("supplier_id_null", supplier_id=None),
    )
    add(
        "supplier_id_blank",
        {"expect": "quarantine", "rule": "supplier_id_not_blank"},
        _row("supplier_id_blank", supplier_id="\u3000 "),
    )
    add(
        "updated_at_null",
        {"expect": "quarantine", "rule": "updated_at_not_null"},
        _row("updated_at_null", updated_at=None),
    )

    # titles
    add(
        "title_null_no_image",
        {"expect": "quarantine", "rule": "title_or_image_present"},
        _row("title_null_no_image", title=None),
    )
    add(
        "title_empty_no_image",
        {"expect": "quarantine", "rule": "title_or_image_present"},
        _row("title_empty_no_image", title=""),
    )
    add(
        "title_whitespace_only",
        {"expect": "quarantine", "rule": "title_or_image_present"},
        _row("title_whitespace_only", title=_WHITESPACE_ONLY),
    )
    add(
        "title_invisible_only",
        {"expect": "quarantine", "rule": "title_or_image_present"},
        _row("title_invisible_only", title=_INVISIBLE_ONLY),
    )
    add(
        "title_50000_chars",
        {
            "expect": "quarantine",
            "rule": "title_too_long",
            "detail": (f"title has 50000 characters, validation.max_title_chars is {MAX_TITLE_CHARS}"),
        },
        _row("title_50000_chars", title=("Phone case with stand " * 2273)[:50_000]),
    )
    add(
        "title_over_limit",
        {"expect": "quarantine", "rule": "title_too_long", "detail": f"title has {MAX_TITLE_CHARS + 1} characters"},
        _row("title_over_limit", title="é" * (MAX_TITLE_CHARS + 1)),
    )
    add("title_at_limit", embedded_text, _row("title_at_limit", title="é" * MAX_TITLE_CHARS))
    add(
        "title_50000_whitespace_with_image",
        {"expect": "quarantine", "rule": "title_too_long"},
        _row("title_50000_whitespace_with_image", title=" " * 50_000, image=_jpeg()),
    )
    add(
        "title_null_with_image",
        {"expect": "embedded", "has_text": False, "has_image": True, "image_error": None},
        _row("title_null_with_image", title=None, image=_jpeg()),
    )
    add(
        "title_whitespace_with_image",
        {"expect": "embedded", "has_text": False, "has_image": True, "image_error": None},
        _row("title_whitespace_with_image", title=_WHITESPACE_ONLY, image=_png()),
    )
    for name, title in SCRIPT_TITLES.items():
        add(f"title_script_{name}", embedded_text, _row(f"title_script_{name}", title=title))

    # strings that are not UTF-8 (a writer that does not validate): found in Spark, never decoded
    index = len(rows)
    add(
        "title_not_utf8",
        {"expect": "quarantine", "rule": "text_valid_utf8", "detail": "not valid UTF-8: title"},
        _row("title_not_utf8", title="placeholder"),
    )
    raw_strings[(index, "title")] = b"Caf\xe9 cr\xe8me mug \xff\xfe"  # Latin-1 bytes, not UTF-8
    index = len(rows)
    add(
        "brand_not_utf8",
        {"expect": "quarantine", "rule": "text_valid_utf8", "detail": "not valid UTF-8: brand"},
        _row("brand_not_utf8", title="Good title", brand="placeholder"),
    )
    raw_strings[(index, "brand")] = b"\xc3\x28 brand"  # an invalid 2-byte sequence

    # duplicates within the day
    add(
        "dup_within_day",
        {
            "expect": "quarantine",
            "rule": "listing_id_unique",
            "count": 2,
            "kept_price": 3.0,
            "detail": "superseded by a newer row",
        },
        _row("dup_within_day", hour=1, price=1.0),
        _row("dup_within_day", hour=3, price=3.0),
        _row("dup_within_day", hour=2, price=2.0),
    )
    add(
        "dup_latest_row_broken",
        {"expect": "quarantine", "rule": "supplier_id_not_null", "kept_price": 1.0},
        _row("dup_latest_row_broken", hour=1, price=1.0),
        _row("dup_latest_row_broken", hour=5, price=5.0, supplier_id=None),
    )
    # dup_tie_later_file_wins: this row and one in part-00004 share updated_at; the later file wins
    add(
        "dup_tie_later_file_wins",
        {"expect": "quarantine", "rule": "listing_id_unique", "kept_price": 4.0},
        _row("dup_tie_later_file_wins", hour=2, price=0.5),
    )

    # images (bytes)
    images = image_bytes()
    decoded = {"expect": "embedded", "has_text": True, "has_image": True, "image_error": None}
    for name, reason in (
        ("image_corrupt", "undecodable"),
        ("image_html_error_page", "undecodable"),
        ("image_truncated_jpeg", "truncated"),
        ("image_truncated_png", "truncated"),
        ("image_zero_bytes", "empty_bytes"),
        ("image_20000x20000", "image_too_large"),
        ("image_over_max_pixels", "image_too_large"),
    ):
        add(
            name,
            {"expect": "embedded", "has_text": True, "has_image": False, "image_error": reason},
            _row(name, title=f"garden hose {name}", image=images[name]),
        )
    for name in (
        "image_cmyk_jpeg",
        "image_16bit_png",
        "image_animated_gif",
        "image_animated_png",
        "image_rgba_png",
        "image_la_png",
        "image_palette_transparency",
        "image_webp",
        "image_plain_jpeg",
    ):
        add(name, decoded, _row(name, title=f"ceramic mug {name}", image=images[name]))
    add(
        "image_corrupt_no_title",
        {"expect": "skipped", "reason": "not_embeddable"},
        _row("image_corrupt_no_title", title=None, image=images["image_corrupt"]),
    )
    add(
        "image_zero_bytes_no_title",
        {"expect": "skipped", "reason": "not_embeddable"},
        _row("image_zero_bytes_no_title", title="  ", image=b""),
    )

    # image_uri
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    (image_dir / "mug.jpg").write_bytes(_jpeg())
    add("image_uri_ok", decoded, _row("image_uri_ok", title="mug from uri", image_uri=str(image_dir / "mug.jpg")))
    add(
        "image_uri_missing",
        {
            "expect": "embedded",
            "has_text": True,
            "has_image": False,
            "image_error": "image_uri_unreadable: FileNotFoundError",
        },
        _row("image_uri_missing", title="mug, image gone", image_uri=str(image_dir / "does-not-exist.jpg")),
    )
    add(
        "image_uri_unknown_protocol",
        {"expect": "embedded", "has_text": True, "has_image": False, "image_error": "image_uri_not_allowed"},
        _row("image_uri_unknown_protocol", title="mug, odd uri", image_uri="nosuchprotocol://bucket/mug.jpg"),
    )
    # a readable image outside validation.image_uri_roots (the images folder) is not read
    (root / "outside.jpg").write_bytes(_jpeg())
    add(
        "image_uri_outside_roots",
        {"expect": "embedded", "has_text": True, "has_image": False, "image_error": "image_uri_not_allowed"},
        _row("image_uri_outside_roots", title="mug, image elsewhere", image_uri=str(image_dir / ".." / "outside.jpg")),
    )
    add(
        "image_uri_javascript",
        {"expect": "embedded", "has_text": True, "has_image": False, "image_error": "image_uri_not_allowed"},
        _row("image_uri_javascript", title="mug, script uri", image_uri="javascript:alert(1)"),
    )
    add(
        "image_uri_missing_no_title",
        {"expect": "skipped", "reason": "not_embeddable"},
        _row("image_uri_missing_no_title", title=None, image_uri=str(image_dir / "also-missing.png")),
    )

    # deletion, and the ids that UPDATE_DAY sends again
    add("deleted_listing", {"expect": "skipped", "reason": "is_deleted"}, _row("deleted_listing", is_deleted=True))
    add("update_base", embedded_text, _row("id_across_days_update", title="Blue kettle 1.7l", price=30.0))
    add("delete_base", embedded_text, _row("id_across_days_delete", title="Red kettle 1.7l", price=25.0))

    _write(day / "part-00000.parquet", _listings_table(rows, raw_strings))

    # part-00001: only the required columns (the optional ones are absent, read as null)
    required = _row("optional_columns_missing", title="Only required columns")
    cases.append(
        {
            "case": "optional_columns_missing",
            "day": ROWS_DAY,
            "listing_id": required["listing_id"],
            "title": required["title"],
            **embedded_text,
        }
    )
    _write(
        day / "part-00001.parquet",
        pa.table(
            {
                "listing_id": [required["listing_id"]],
                "supplier_id": [SUPPLIER],
                "title": [required["title"]],
                "updated_at": pa.array([required["updated_at"]], LISTINGS.field("updated_at").type),
            }
        ),
    )

    # part-00002: extra columns, one of a type Spark could not read (ignored, never read)
    extra = _row("extra_columns", title="Extra columns are ignored")
    cases.append(
        {
            "case": "extra_columns",
            "day": ROWS_DAY,
            "listing_id": "extra_columns",
            "title": extra["title"],
            **embedded_text,
        }
    )
    table = _listings_table([extra])
    table = table.append_column("seller_notes", pa.array(["ships fast"]))
    table = table.append_column("created_at_ns", pa.array([_at(ROWS_DAY)], pa.timestamp("ns", tz="UTC")))
    table = table.append_column("attributes", pa.array([{"color": "red", "size": 3}]))
    _write(day / "part-00002.parquet", table)

    # part-00003: other physical types Spark reads as the contract's (what pandas & co. write)
    variant = _row("compatible_types", title="Other but readable types")
    cases.append(
        {
            "case": "compatible_types",
            "day": ROWS_DAY,
            "listing_id": "compatible_types",
            "title": variant["title"],
            **embedded_text,
        }
    )
    _write(
        day / "part-00003.parquet",
        pa.table(
            {
                "listing_id": pa.array(["compatible_types"], pa.large_string()),
                "supplier_id": pa.array([SUPPLIER]).dictionary_encode(),  # a pandas categorical
                "title": pa.array([variant["title"]], pa.string_view()),
                "description": pa.nulls(1),  # an all-null column, as pandas writes one
                "price": pa.array([12], pa.int32()),
                "image": pa.array([None], pa.large_binary()),
                "updated_at": pa.array([dt.datetime(2031, 1, 1, 1)], pa.timestamp("ms")),  # naive: read as UTC
                "is_deleted": pa.array([False]),
            }
        ),
    )

    # part-00004: the tie partner of dup_tie_later_file_wins
    _write(day / "part-00004.parquet", _listings_table([_row("dup_tie_later_file_wins", hour=2, price=4.0)]))

    # side files of writers and desktops, ignored as Spark ignores names starting with _ or .
    # (not a .crc file: Hadoop's local file system reads `.<name>.crc` as the file's checksum)
    (day / "_SUCCESS").write_bytes(b"")
    (day / "_committed_8123").write_text('{"added": ["part-00000.parquet"]}')
    (day / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def _update_day(root: Path, cases: list[dict[str, Any]]) -> None:
    """UPDATE_DAY: ids from ROWS_DAY again, as an update and a deletion."""
    rows = [
        _row("id_across_days_update", UPDATE_DAY, title="Blue kettle 1.7l, new lid", price=27.0, hour=9),
        _row("id_across_days_delete", UPDATE_DAY, title="Red kettle 1.7l", price=25.0, is_deleted=True),
    ]
    _write(root / "listings" / f"dt={UPDATE_DAY}" / "part-00000.parquet", _listings_table(rows))
    cases.append(
        {
            "case": "id_across_days_update",
            "day": UPDATE_DAY,
            "listing_id": "id_across_days_update",
            "title": rows[0]["title"],
            "expect": "updated",
            "kept_price": 27.0,
        }
    )
    cases.append(
        {
            "case": "id_across_days_delete",
            "day": UPDATE_DAY,
            "listing_id": "id_across_days_delete",
            "title": rows[1]["title"],
            "expect": "skipped",
            "reason": "is_deleted",
        }
    )


def _empty_days(root: Path, cases: list[dict[str, Any]]) -> None:
    listings = root / "listings"
    folder = listings / f"dt={EMPTY_FOLDER_DAY}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_SUCCESS").write_bytes(b"")
    _write(listings / f"dt={ZERO_ROWS_DAY}" / "part-00000.parquet", LISTINGS.empty_table())
    cases += [
        {
            "case": "day_folder_empty",
            "day": EMPTY_FOLDER_DAY,
            "expect": "empty",
            "message": [f"no listings for {EMPTY_FOLDER_DAY}", "no Parquet files under"],
        },
        {
            "case": "day_folder_absent",
            "day": ABSENT_DAY,
            "expect": "empty",
            "message": [f"no listings for {ABSENT_DAY}", "no Parquet files under"],
        },
        {
            "case": "day_zero_row_file",
            "day": ZERO_ROWS_DAY,
            "expect": "empty",
            "message": [f"no listings for {ZERO_ROWS_DAY}", "1 Parquet file(s)", "hold zero rows"],
        },
    ]


def _error_days(root: Path, cases: list[dict[str, Any]]) -> None:
    """Days whose files stop the run: the message must name each file and column at fault."""
    listings = root / "listings"
    good = _listings_table([_row("fine", title="A fine row")])

    folder = listings / f"dt={NOT_PARQUET_DAY}"
    _write(folder / "part-00000.parquet", good)
    (folder / "listings.csv").write_text("listing_id,supplier_id,title\nx,s,t\n")
    (folder / "README.txt").write_text("exported by the supplier portal\n")
    cases.append(
        {
            "case": "non_parquet_file_in_folder",
            "day": NOT_PARQUET_DAY,
            "expect": "error",
            "message": ["files that are not Parquet", "listings.csv", "README.txt", f"dt={NOT_PARQUET_DAY}"],
        }
    )

    folder = listings / f"dt={SUBFOLDER_DAY}"
    _write(folder / "part-00000.parquet", good)
    _write(folder / "region=eu" / "part-00000.parquet", good)
    cases.append(
        {
            "case": "sub_folder_in_day_folder",
            "day": SUBFOLDER_DAY,
            "expect": "error",
            "message": ["sub-folders, which are not read", "region=eu"],
        }
    )

    folder = listings / f"dt={MISSING_COLUMNS_DAY}"
    _write(folder / "no-supplier.parquet", good.drop_columns(["supplier_id"]))
    _write(folder / "no-title-no-time.parquet", good.drop_columns(["title", "updated_at"]))
    cases.append(
        {
            "case": "missing_required_columns",
            "day": MISSING_COLUMNS_DAY,
            "expect": "error",
            "message": [
                "no-supplier.parquet: required column 'supplier_id' is missing",
                "no-title-no-time.parquet: required column 'title' is missing",
                "no-title-no-time.parquet: required column 'updated_at' is missing",
                "nothing was written",
            ],
        }
    )

    folder = listings / f"dt={WRONG_TYPES_DAY}"
    wrong = {  # file name -> (column, its array, what the message says after "<file>: ")
        "listing_id_int64": ("listing_id", pa.array([7], pa.int64()), ["column 'listing_id' is int64"]),
        "updated_at_string": (
            "updated_at",
            pa.array(["2031-01-09T01:00:00Z"]),
            ["column 'updated_at' is string, the contract says timestamp[us, tz=UTC]"],
        ),
        # what pandas writes by default; Spark fails on it deep inside the read without this check
        "updated_at_nanoseconds": (
            "updated_at",
            pa.array([_at(WRONG_TYPES_DAY)], pa.timestamp("ns", tz="UTC")),
            [
                "column 'updated_at' is timestamp[ns, tz=UTC]",
                "Spark cannot read nanosecond timestamps; write microseconds",
            ],
        ),
        "price_int64": ("price", pa.array([5], pa.int64()), ["column 'price' is int64", "cast it to double"]),
        "price_string": ("price", pa.array(["5.00"]), ["column 'price' is string", "cast it to double"]),
        "price_float16": ("price", pa.array([np.float16(1.5)], pa.float16()), ["column 'price' is halffloat"]),
        "is_deleted_int8": (
            "is_deleted",
            pa.array([0], pa.int8()),
            ["column 'is_deleted' is int8, the contract says bool; write it as bool"],
        ),
    }
    for name, (column, array, fragments) in wrong.items():
        table = good.set_column(good.schema.get_field_index(column), column, array)
        _write(folder / f"{name}.parquet", table)
        cases.append(
            {
                "case": f"wrong_type_{name}",
                "day": WRONG_TYPES_DAY,
                "expect": "error",
                "message": [f"{name}.parquet: {fragments[0]}", *fragments[1:]],
            }
        )

    folder = listings / f"dt={UNREADABLE_DAY}"
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    pq.write_table(good, buffer)
    (folder / "zero-bytes.parquet").write_bytes(b"")
    (folder / "csv-renamed.parquet").write_text("listing_id,supplier_id,title\nx,s,t\n")
    (folder / "truncated.parquet").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for name in ("zero-bytes", "csv-renamed", "truncated"):
        cases.append(
            {
                "case": f"unreadable_parquet_{name.replace('-', '_')}",
                "day": UNREADABLE_DAY,
                "expect": "error",
                "message": [f"{name}.parquet: not a readable Parquet file"],
            }
        )


def build_corpus(root: str | Path) -> list[dict[str, Any]]:
    """Writes the bad-input corpus (all days but the scale day) under ``root``.

    Args:
        root: an empty or absent folder; listings go to ``root/listings`` (the ``listings_root``).

    Returns:
        The cases (also written to ``root/expected.json``).
    """
    root = Path(root)
    cases: list[dict[str, Any]] = []
    _rows_day(root, cases)
    _update_day(root, cases)
    _empty_days(root, cases)
    _error_days(root, cases)
    names = [c["case"] for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    (root / "expected.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False, default=str))
    return cases


def build_scale_day(root: str | Path, listings: int = SCALE_LISTINGS) -> dict[str, Any]:
    """Writes SCALE_DAY: one supplier with ``listings`` valid listings, plus a few bad rows.

    5 more listings have blank titles and no image (quarantined), and 10 listings arrive twice, the
    second copy older (quarantined as duplicates). One file, as a supplier's export would be.

    Returns:
        The ``counts`` case.
    """
    day = Path(root) / "listings" / f"dt={SCALE_DAY}"
    blank, repeated = 5, 10
    n = listings + blank
    ids = [f"giant-{k:07d}" for k in range(n)]
    titles = [f"Giant supplier product {k} colour {k % 17} size {k % 5}" for k in range(n)]
    for k in range(blank):
        titles[k * (n // blank)] = " "
    stamp = _at(SCALE_DAY, 6)
    table = pa.table(
        {
            "listing_id": ids + [ids[k * 997 + 1] for k in range(repeated)],
            "supplier_id": ["giant"] * (n + repeated),
            "title": titles + [titles[k * 997 + 1] for k in range(repeated)],
            "price": np.round(np.arange(n + repeated) % 1000 * 0.5 + 1, 2),
            "updated_at": pa.array([stamp] * n + [_at(SCALE_DAY, 2)] * repeated, LISTINGS.field("updated_at").type),
        }
    )
    _write(day / "part-00000.parquet", table)
    return {
        "case": "supplier_200000_listings",
        "day": SCALE_DAY,
        "expect": "counts",
        "read": n + repeated,
        "validated": listings,
        "quarantined": {"title_or_image_present": blank, "listing_id_unique": repeated},
    }


def main(argv: list[str] | None = None) -> int:
    """Writes the corpus into a folder; prints how many cases of each kind."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder to write (listings_root is OUT/listings)")
    parser.add_argument("--scale", action="store_true", help=f"also write {SCALE_DAY}: 200,000 listings")
    args = parser.parse_args(argv)
    cases = build_corpus(args.out)
    if args.scale:
        cases.append(build_scale_day(args.out))
        Path(args.out, "expected.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False, default=str))
    kinds: dict[str, int] = {}
    for case in cases:
        kinds[case["expect"]] = kinds.get(case["expect"], 0) + 1
    print(json.dumps({"out": str(Path(args.out).resolve()), "cases": len(cases), "by_expect": kinds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
