"""Loads the one typed config: defaults, then a TOML file, env vars, then CLI flags.

Precedence (later wins):
1. the defaults (``config.sections`` and the component configs);
2. a TOML file (``--config``; the repo ships ``conf/sspr.toml``);
3. environment variables ``SSPR__SECTION__KEY`` (e.g. ``SSPR__DEDUP__MIN_SIMILARITY=0.9``);
4. CLI flags ``--set section.key=value`` (and stage flags such as ``--min-similarity``).

Unknown sections or keys are errors, and every problem is reported at once. Relative paths in
``[paths]`` (and the file keys in ``PATH_KEYS`` and ``PATH_LIST_KEYS``) are resolved against the
directory of the TOML file that set them (or the working directory for defaults, env vars and
flags), so the same file works from any working directory, including an Airflow worker's. A list
key (``tuple[str, ...]``) takes a TOML array, or from env vars and flags a JSON array or a comma
list (``--set validation.image_uri_schemes=file,https``). The resolved config is written as JSON
next to each stage's output.

Example:
    >>> cfg = load_config("conf/sspr.toml", overrides={"dedup.min_similarity": "0.9"})
    >>> cfg.dedup.min_similarity
    0.9
"""

from __future__ import annotations

import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.sections import PipelineConfig

ENV_PREFIX = "SSPR__"


_SECTION_TYPES: dict[str, type] = typing.get_type_hints(PipelineConfig)
"""Section name -> its dataclass, e.g. ``"dedup" -> DedupConfig``."""


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Converts a TOML value or a string from env / CLI to the field's declared type."""
    origin = typing.get_origin(target)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if target is int:
        if isinstance(value, (bool, float)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if target is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if target is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is dict or target is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: expected a JSON object / TOML table") from None
        if not isinstance(value, Mapping):
            raise ConfigError(f'{where}: expected a table of key = "value"')
        return {str(k): str(v) for k, v in value.items()}
    if origin is tuple and typing.get_args(target) == (str, ...):
        if isinstance(value, str):
            # env / --set: a JSON array, or a comma list such as "file,https"
            if value.strip().startswith("["):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise ConfigError(f"{where}: expected a JSON array or a comma list") from None
            else:
                value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{where}: expected a list of strings, e.g. ["a", "b"], got {value!r}')
        return tuple(value)
    if isinstance(target, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in config")
    raise ConfigError(f"{where}: unsupported config type {target!r}")


def _resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    if "://" in value:  # a URL (hdfs://, s3a://): leave untouched
        return value
    return str(path if path.is_absolute() else (base / path).resolve())


# file paths outside [paths], resolved the same way
PATH_KEYS = {
    ("encoder", "weights"),
    ("encoder", "lexical_idf"),
    ("dedup", "verifier"),
    ("train", "out"),
    ("train", "checkpoint_dir"),
    ("train", "init_weights"),
    ("review", "decisions_db"),
    ("review", "secret_key_file"),
    ("review", "suggestions_dir"),
}
# lists of file paths, each resolved the same way
PATH_LIST_KEYS = {("validation", "image_uri_roots")}


def _apply(
    layers: dict[str, dict[str, Any]],
    raw: Mapping[str, Any],
    origin: str,
    base: Path,
    problems: list[str],
) -> None:
    """Merges one layer of ``{section: {key: value}}`` into ``layers`` with type checks."""
    section_types = _SECTION_TYPES
    for section, values in raw.items():
        if section not in section_types:
            problems.append(f"{origin}: unknown section [{section}]; known: {sorted(section_types)}")
            continue
        if not isinstance(values, Mapping):
            problems.append(f"{origin}: [{section}] must be a table")
            continue
        cls = section_types[section]
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            where = f"{origin}: {section}.{key}"
            if key not in hints:
                problems.append(f"{where} is not a known key; known: {sorted(hints)}")
                continue
            try:
                coerced = _coerce(value, hints[key], where)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            if section == "paths" or (section, key) in PATH_KEYS and coerced:
                coerced = _resolve_path(coerced, base)
            elif (section, key) in PATH_LIST_KEYS:
                coerced = tuple(_resolve_path(p, base) for p in coerced)
            layers.setdefault(section, {})[key] = coerced


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """Builds the pipeline config from defaults, a TOML file, env vars and CLI overrides.

    Args:
        path: a TOML file with ``[section]`` tables; None for defaults only.
        overrides: dotted ``section.key`` -> string value, from CLI flags (highest precedence).
        environ: the environment to read ``SSPR__SECTION__KEY`` from; ``os.environ`` when None.

    Returns:
        The frozen ``PipelineConfig``; relative ``paths`` are absolute.

    Raises:
        ConfigError: listing every unknown key, bad type or invalid value at once.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    layers: dict[str, dict[str, Any]] = {}
    cwd = Path.cwd()

    defaults = PipelineConfig().to_dict()
    _apply(layers, {"paths": defaults["paths"]}, "defaults", cwd, problems)

    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist; pass --config with a TOML file")
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from None
        _apply(layers, data, str(file), file.resolve().parent, problems)

    env_layer: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2:
            problems.append(f"env {name}: expected SSPR__SECTION__KEY")
            continue
        env_layer.setdefault(parts[0], {})[parts[1]] = value
    _apply(layers, env_layer, "env", cwd, problems)

    flag_layer: dict[str, dict[str, Any]] = {}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            problems.append(f"flag --set {dotted}={value}: expected section.key=value")
            continue
        flag_layer.setdefault(section, {})[key] = value
    _apply(layers, flag_layer, "flag", cwd, problems)

    section_types = _SECTION_TYPES
    sections = {}
    for name, cls in section_types.items():
        try:
            sections[name] = cls(**layers.get(name, {}))
        except (ValueError, TypeError) as exc:
            problems.append(f"[{name}]: {exc}")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return PipelineConfig(**sections)
