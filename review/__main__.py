"""Starts the governance review app on the warehouse the config names.

    python -m review --config conf/sspr.toml            # http://127.0.0.1:8765
    python -m review --config conf/sspr.toml --port 9000

The app shows every night the report stage published under ``paths.reports_dir`` (run ``make
nightly`` first), records decisions into ``review.decisions_db`` and suggests thresholds from them.
It listens on ``review.host`` (127.0.0.1 by default: put a reverse proxy with your single sign-on in
front of it to serve others, and set ``review.identity_header`` to the header it sets).
"""

from __future__ import annotations

import argparse
import logging
import sys

from config.command import add_shortcut, command_parser, run_command
from config.sections import PipelineConfig

log = logging.getLogger("review")


def serve(args: argparse.Namespace, config: PipelineConfig) -> int:
    """Serves the app until interrupted; returns the exit code."""
    import uvicorn

    from review.app import create_app

    app = create_app(config)
    log.info(
        "review app on http://%s:%d (reports %s, decisions %s)",
        config.review.host,
        config.review.port,
        config.paths.reports_dir,
        config.review.decisions_db,
    )
    uvicorn.run(app, host=config.review.host, port=config.review.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = command_parser("python -m review", __doc__)
    add_shortcut(parser, "--host", "review.host", "the address to listen on")
    add_shortcut(parser, "--port", "review.port", "the port to listen on")
    return run_command("review", serve, argv, parser, logger=log)


if __name__ == "__main__":
    sys.exit(main())
