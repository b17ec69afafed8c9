"""The one typed pipeline config: frozen dataclasses loaded from TOML, env vars, then CLI flags.

Precedence (later wins):
1. the defaults below;
2. a TOML file (``--config``; the repo ships ``conf/sspr.toml``);
3. environment variables ``SSPR__SECTION__KEY`` (e.g. ``SSPR__DEDUP__MIN_SIMILARITY=0.9``);
4. CLI flags ``--set section.key=value`` (and stage flags such as ``--min-similarity``).

Unknown sections or keys are errors, and every problem is reported at once. Relative paths in
``[paths]`` (and ``encoder.weights``) are resolved against the directory of the TOML file that set
them (or the working directory for defaults, env vars and flags), so the same file works from any
working directory, including an Airflow worker's. The resolved config is written as JSON next to
each stage's output.

Example:
    >>> cfg = load_config("conf/sspr.toml", overrides={"dedup.min_similarity": "0.9"})
    >>> cfg.dedup.min_similarity
    0.9
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder.config import EncoderConfig

ENV_PREFIX = "SSPR__"


class ConfigError(ValueError):
    """A config file, env var or flag is wrong; the message lists every problem found."""


@dataclass(frozen=True)
class PathsConfig:
    """Where data lives. Relative paths resolve against the config file's directory."""

    listings_root: str = "examples/listings"  # input: {listings_root}/dt=YYYY-MM-DD/*.parquet
    warehouse_dir: str = "var/warehouse"  # spark.sql.warehouse.dir (table data)
    metastore_dir: str = "var/metastore"  # embedded Derby metastore (ignored with an external one)
    reports_dir: str = "var/reports"  # review pages and report.json per run date
    runs_dir: str = "var/runs"  # resolved config per stage and run date


@dataclass(frozen=True)
class WarehouseConfig:
    """The Spark SQL / Hive warehouse."""

    database: str = "dedup"  # Hive database holding every table
    metastore_uris: str = ""  # thrift://host:9083 of an external Hive metastore; "" = embedded
    metastore_jdbc_url: str = ""  # JDBC URL of a metastore DB; "" = Derby in paths.metastore_dir


@dataclass(frozen=True)
class SparkConfig:
    """Spark settings applied when a job builds its session."""

    master: str = ""  # "" = keep spark-submit's --master, else local[*] when run by hand
    shuffle_partitions: int = 8  # spark.sql.shuffle.partitions (small data by default)
    executor_gpus: float = 0.0  # spark.executor.resource.gpu.amount; 0 = no GPU scheduling
    task_gpus: float = 0.0  # spark.task.resource.gpu.amount, e.g. 1 = one GPU per embed task
    gpu_discovery_script: str = ""  # spark.executor.resource.gpu.discoveryScript
    arrow_batch_rows: int = 256  # rows per Arrow batch fed to the encoder / pair search
    conf: dict[str, str] = field(default_factory=dict)  # any other spark.* setting, verbatim


@dataclass(frozen=True)
class ValidationConfig:
    """Input validation."""

    fail_on_empty_day: bool = False  # True: a day with no input rows fails the run
    # titles longer than this many characters (Unicode code points) are quarantined as
    # title_too_long (the text model reads only the first encoder.text_max_tokens tokens, so a
    # pasted description would be silently cut); 0 = no limit
    max_title_chars: int = 1000

    def __post_init__(self) -> None:
        if self.max_title_chars < 0:
            raise ConfigError(f"validation.max_title_chars={self.max_title_chars} must be >= 0 (0 = no limit)")


@dataclass(frozen=True)
class DedupConfig:
    """Pair search and grouping."""

    min_similarity: float = 0.88  # similarity_m at or above which two listings pair
    # where min_similarity came from (a calibration run, or why it was set by hand); it is
    # written with the resolved config of every stage, so each run's threshold has provenance
    min_similarity_source: str = ""
    max_results_per_query: int = 50  # per-query budget; more hits are cut and flagged saturated
    query_block_size: int = 2048  # queries per pair-search task (splits giant suppliers)
    backend: str = "faiss"  # "faiss" (IndexFlatIP range search) or "blocked" (matmul; GPU path)
    device: str = "cpu"  # device for the "blocked" backend: "cpu" or "cuda[:N]"

    def __post_init__(self) -> None:
        problems = []
        if not -1.0 <= self.min_similarity <= 1.0:
            problems.append(f"dedup.min_similarity={self.min_similarity} must be in [-1, 1]")
        if self.max_results_per_query < 1:
            problems.append("dedup.max_results_per_query must be >= 1")
        if self.query_block_size < 1:
            problems.append("dedup.query_block_size must be >= 1")
        if self.backend not in ("faiss", "blocked"):
            problems.append(f"dedup.backend={self.backend!r} must be 'faiss' or 'blocked'")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class SamplingConfig:
    """Positive training pairs from click logs (``jobs/sample_pairs.py``)."""

    category_level: int = 1  # both listings must share the first N levels of their category path
    category_separator: str = ">"  # splits a category path such as "Dairy > Milk > Oat"
    min_relevance: float = 0.5  # zero-shot title similarity (MiniLM cosine) a pair must reach
    max_pairs_per_trigger: int = 10  # keep the most relevant pairs of a trigger listing

    def __post_init__(self) -> None:
        problems = []
        if self.category_level < 0:
            problems.append("sampling.category_level must be >= 0 (0 = no category constraint)")
        if not self.category_separator:
            problems.append("sampling.category_separator must not be empty")
        if not -1.0 <= self.min_relevance <= 1.0:
            problems.append(f"sampling.min_relevance={self.min_relevance} must be in [-1, 1]")
        if self.max_pairs_per_trigger < 1:
            problems.append("sampling.max_pairs_per_trigger must be >= 1")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a stage needs, composed from the component configs."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as plain JSON-serialisable dicts (section -> key -> value)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Returns the config as indented JSON, for writing next to a stage's output."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


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
            raise ConfigError(f"{where}: expected a table of key = \"value\"")
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(target, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in config")
    raise ConfigError(f"{where}: unsupported config type {target!r}")


def _resolve_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    if "://" in value:  # a URL (hdfs://, s3a://): leave untouched
        return value
    return str(path if path.is_absolute() else (base / path).resolve())


_PATH_KEYS = {("encoder", "weights"), ("encoder", "lexical_idf")}  # file paths outside [paths], resolved the same way


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
            if section == "paths" or (section, key) in _PATH_KEYS and coerced:
                coerced = _resolve_path(coerced, base)
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
