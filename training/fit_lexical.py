"""fit_lexical: fits the IDF table of the hybrid encoder's lexical part on training titles.

The lexical part (``encoder.lexical``) hashes each title's character 3–5-grams into
``encoder.lexical_buckets`` columns and weights them by IDF. This command computes that IDF from
the titles of the training corpus only: WDC Products ``000un_train_medium`` offers, without the
offers that also appear in ``000un_valid_medium`` or a gs file (the same exclusion as
``training.train``). No evaluation, test or Leipzig file is read. It writes the table the config's
encoder reads (``encoder.lexical_idf``, a float32 ``.npy``) and a ``<file>.json`` record (corpus
size, buckets, sha256), so the table always has the config's bucket count.

    python -m training.fit_lexical --config conf/sspr.toml

Exit codes: 0 done, 2 missing datasets or bad settings (the message says which), 1 a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path

from benchmarks.datasets import WDC_TEST, WDC_TRAIN, WDC_VALID, read_wdc_train
from config.command import add_shortcut, command_parser, run_command
from config.errors import DedupError
from encoder.lexical import fit_idf, save_idf

log = logging.getLogger(__name__)


def training_titles(shared: Path) -> list[str]:
    """Returns the WDC train_medium titles that are not reserved for validation or testing.

    Args:
        shared: the shared datasets folder.

    Returns:
        The titles, one per offer, in file order.

    Raises:
        FileNotFoundError: if the WDC folder is missing.
    """
    offers, reserved = read_wdc_train(shared)
    kept = offers[~offers["id"].isin(reserved)]
    log.info(
        "%s: %d offers, %d reserved (in %s) left out, %d titles used",
        WDC_TRAIN,
        len(offers),
        len(offers) - len(kept),
        ", ".join((WDC_VALID, *WDC_TEST)),
        len(kept),
    )
    return [t for t in kept["title"].tolist() if isinstance(t, str) and t.strip()]


def main(argv: list[str] | None = None) -> int:
    """Fits and writes the IDF table; returns the exit code."""
    parser = command_parser("python -m training.fit_lexical", __doc__)
    add_shortcut(parser, "--shared", "paths.datasets_dir", "the shared datasets folder")
    add_shortcut(parser, "--out", "encoder.lexical_idf", "where to write the IDF table (.npy)")
    add_shortcut(parser, "--buckets", "encoder.lexical_buckets", "hash columns of the lexical part")
    command_line = " ".join(["python -m training.fit_lexical", *(sys.argv[1:] if argv is None else argv)])

    def body(args, config) -> int:
        started = time.perf_counter()
        out, buckets = config.encoder.lexical_idf, config.encoder.lexical_buckets
        if not out:
            raise DedupError("encoder.lexical_idf is empty: set it (or pass --out) to the file to write")
        try:
            titles = training_titles(Path(config.paths.datasets_dir))
        except FileNotFoundError as error:
            raise DedupError(str(error)) from None
        idf = fit_idf(titles, buckets)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_idf(idf, out)
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        record = {"command": command_line, "titles": len(titles), "buckets": buckets, "sha256": digest}
        out.with_name(out.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
        log.info(
            "wrote %s (%d buckets from %d titles, sha256 %s) in %.1fs",
            out,
            buckets,
            len(titles),
            digest[:16],
            time.perf_counter() - started,
        )
        return 0

    return run_command("fit_lexical", body, argv, parser, log)


if __name__ == "__main__":
    sys.exit(main())
