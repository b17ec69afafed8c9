"""The command-line skeleton every command shares: flags, config, logging and exit codes.

Every command (the Spark stages through ``jobs.stage``, and ``sample_pairs``, ``summary``,
``training.train``, ``training.fit_lexical``, ``python -m evaluation``) is built the same way::

    parser = command_parser("python -m training.fit_lexical", __doc__)
    add_shortcut(parser, "--shared", "paths.datasets_dir", "the shared datasets folder")
    sys.exit(run_command("fit_lexical", body, argv, parser))

* ``--config FILE`` (required unless ``SSPR_CONFIG`` names the file) and repeatable
  ``--set section.key=value``; shortcut flags are ``--set`` with a name.
* Logs go to stderr with timestamps; chatty libraries are quietened.
* Exit codes: 0 success; 2 a known problem (``DedupError``, ``ConfigError``: one message that says
  what to do); 1 an unexpected crash (traceback, then a one-line summary).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from config.errors import ConfigError, DedupError
from config.loader import load_config
from config.sections import PipelineConfig

log = logging.getLogger(__name__)

CONFIG_ENV = "SSPR_CONFIG"  # the config file a command reads when --config is not given
_SHORTCUTS = "_sspr_shortcuts"  # parser attribute: [(dest, section.key), ...]
_OWN_HANDLER = "_sspr_handler"  # marks the log handler configure_logging added


def configure_logging() -> None:
    """Sends INFO logs with timestamps to stderr, quietening py4j and other chatty libraries.

    Adds one handler of its own to the root logger (replacing the one an earlier call added) and
    leaves other handlers alone, so a host that captures logs (pytest, an embedding program)
    still sees them.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OWN_HANDLER, False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _OWN_HANDLER, True)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("py4j", "urllib3", "great_expectations", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _key_value(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"{value!r}: use --set section.key=value")
    return key.strip(), val


def command_parser(prog: str, description: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """Returns a parser with the flags every command shares.

    Args:
        prog: how the command is run, shown in ``--help`` (e.g. ``jobs/pairs.py``).
        description: the command's module docstring.
        epilog: extra text after the flags.

    Returns:
        An ``ArgumentParser`` with ``--config`` and ``--set``.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(epilog + "\n\n" if epilog else "")
        + "Config precedence: defaults < --config TOML < SSPR__SECTION__KEY env vars < --set flags "
        "(shortcut flags included). The repo ships conf/sspr.toml.",
    )
    parser.add_argument(
        "--config",
        default=None,
        help=f"the pipeline TOML config (default: the file ${CONFIG_ENV} names; one of the two is required)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_key_value,
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable)",
    )
    setattr(parser, _SHORTCUTS, [])
    return parser


def add_shortcut(parser: argparse.ArgumentParser, flag: str, key: str, help: str, *, switch: bool = False) -> None:
    """Adds a flag that is ``--set key=VALUE`` under a name (``switch``: a flag without a value).

    An empty value keeps the config's (so templated Airflow arguments may pass "").
    """
    dest = "shortcut_" + key.replace(".", "__")
    if switch:
        parser.add_argument(
            flag, dest=dest, action="store_const", const="true", default=None, help=f"{help} (--set {key}=true)"
        )
    else:
        parser.add_argument(
            flag, dest=dest, default=None, metavar=key.split(".")[-1].upper(), help=f"{help} (--set {key}=...)"
        )
    getattr(parser, _SHORTCUTS).append((dest, key))


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PipelineConfig:
    """Loads the config the parsed flags name.

    Returns:
        The resolved ``PipelineConfig``.

    Raises:
        ConfigError: no config file was named, or the config is invalid.
    """
    path = args.config or os.environ.get(CONFIG_ENV) or None
    if path is None:
        raise ConfigError(
            f"no config: pass --config conf/sspr.toml (the shipped defaults) or set {CONFIG_ENV} to a TOML file"
        )
    overrides = {}
    for dest, key in getattr(parser, _SHORTCUTS, []):
        value = getattr(args, dest, None)
        if value not in (None, ""):
            overrides[key] = str(value)
    overrides.update(dict(args.overrides))
    config = load_config(path, overrides)
    log.info("config %s%s", path, f" with {overrides}" if overrides else "")
    return config


def run_command(
    name: str,
    body: Callable[[argparse.Namespace, PipelineConfig], int | None],
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    logger: logging.Logger | None = None,
    context: Callable[[argparse.Namespace], str] | None = None,
) -> int:
    """Parses flags, loads the config, runs ``body(args, config)`` and maps failures to exit codes.

    Args:
        name: the command's name for log lines (``stage pairs``).
        body: the command; its return value (None = 0) is the exit code.
        argv: command-line arguments (``sys.argv[1:]`` when None).
        parser: from ``command_parser`` plus the command's own flags.
        logger: where the outcome is logged (the command's module logger); this module's if None.
        context: a function of the parsed flags giving what follows "failed" in log lines
            (`` for run_date 2024-03-01``).

    Returns:
        0 success, 2 a known problem (message logged), 1 an unexpected crash (traceback logged).
    """
    configure_logging()
    logger = logger or log
    args = parser.parse_args(argv)
    where = context(args) if context else ""
    try:
        config = config_from_args(parser, args)
        return int(body(args, config) or 0)
    except DedupError as exc:
        logger.error("%s failed%s: %s", name, where, exc)
        return 2
    except Exception as exc:  # report, keep the traceback, let Airflow retry
        logger.exception("%s crashed%s", name, where)
        logger.error(
            "%s failed%s with %s: %s (traceback above; fix and rerun the same command)",
            name,
            where,
            type(exc).__name__,
            exc,
        )
        return 1
