"""fit_lexical: fits the IDF table of the hybrid encoder's lexical part on training titles.

The lexical part (``encoder.lexical``) hashes each title's character 3–5-grams into
``--buckets`` columns and weights them by IDF. This command computes that IDF from the titles of
the training corpus only: WDC Products ``000un_train_medium`` offers, without the offers that
also appear in ``000un_valid_medium`` or a gs file (the same exclusion as ``jobs/train.py``).
No evaluation, test or Leipzig file is read. Output: an ``.npy`` float32 table and a
``<out>.json`` record (corpus size, buckets, sha256).

    python -m jobs.fit_lexical --shared ../shared/datasets --out encoder/weights/lexical-idf.npy

Exit codes: 0 done, 2 missing datasets or bad arguments (the message says which).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

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
    from evaluation.datasets import WDC_TEST, WDC_VALID
    from jobs.train import WDC_TRAIN, read_wdc_train

    offers, reserved = read_wdc_train(shared)
    kept = offers[~offers["id"].isin(reserved)]
    log.info("%s: %d offers, %d reserved (in %s) left out, %d titles used", WDC_TRAIN, len(offers),
             len(offers) - len(kept), ", ".join((WDC_VALID, *WDC_TEST)), len(kept))
    return [t for t in kept["title"].tolist() if isinstance(t, str) and t.strip()]


def main(argv: list[str] | None = None) -> int:
    """Fits and writes the IDF table; returns the exit code."""
    from encoder.lexical import fit_idf, save_idf

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m jobs.fit_lexical", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"),
                        help="the shared datasets folder (default ../shared/datasets)")
    parser.add_argument("--out", type=Path, default=Path("encoder/weights/lexical-idf.npy"),
                        help="where to write the IDF table (.npy)")
    parser.add_argument("--buckets", type=int, default=2048,
                        help="hash columns; must equal encoder.lexical_buckets (default 2048)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        titles = training_titles(args.shared)
        idf = fit_idf(titles, args.buckets)
    except (FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_idf(idf, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    record = {"command": " ".join(["python -m jobs.fit_lexical", *(argv or sys.argv[1:])]),
              "titles": len(titles), "buckets": args.buckets, "sha256": digest}
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s (%d buckets from %d titles, sha256 %s) in %.1fs", args.out, args.buckets,
             len(titles), digest[:16], time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
