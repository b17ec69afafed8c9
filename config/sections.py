"""The sections of the one typed config. Each default is stated once, here or in its component.

Component-owned sections come from their packages (``[encoder]`` and ``[loss]`` from
``encoder.config``, ``[dedup]`` from ``dedup.config``); the others are defined here. Each
comment says what a key means or its unit.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from config.errors import ConfigError
from dedup.config import DedupConfig
from encoder.config import EncoderConfig, LossConfig

_MEMORY = re.compile(r"^[1-9][0-9]*[kmgt]$")  # a JVM size: 4g, 512m
_URI_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*$")  # RFC 3986 scheme, lower-case
TRAIN_SOURCES = ("wdc", "grocery")  # training.train: WDC text clusters, GroceryStore photos


@dataclass(frozen=True)
class PathsConfig:
    """Where data lives. Relative paths resolve against the config file's directory."""

    listings_root: str = "examples/listings"  # input: {listings_root}/dt=YYYY-MM-DD/*.parquet
    warehouse_dir: str = "var/warehouse"  # spark.sql.warehouse.dir (table data)
    metastore_dir: str = "var/metastore"  # embedded Derby metastore (ignored with an external one)
    reports_dir: str = "var/reports"  # review pages and report.json per run date
    runs_dir: str = "var/runs"  # resolved config per stage and run date
    # the public benchmarks (training, fit_lexical, evaluation); a user's clone has none
    datasets_dir: str = "../shared/datasets"


@dataclass(frozen=True)
class WarehouseConfig:
    """The Spark SQL / Hive warehouse."""

    database: str = "dedup"  # Hive database holding every table
    metastore_uris: str = ""  # thrift://host:9083 of an external Hive metastore; "" = embedded
    metastore_jdbc_url: str = ""  # JDBC URL of a metastore DB; "" = Derby in paths.metastore_dir
    # with metastore_jdbc_url (e.g. PostgreSQL from bin/metastore-db): its login, and the JDBC
    # driver's jar(s) for the driver JVM's class path (":"-separated)
    metastore_user: str = ""
    metastore_password: str = ""  # prefer SSPR__WAREHOUSE__METASTORE_PASSWORD; never written out
    metastore_jdbc_jars: str = ""
    # catalog / live_pairs folders per run date: pmod(xxhash64(supplier_id), supplier_buckets), so
    # the pairs stage reads the day's suppliers' vectors without scanning everyone's
    supplier_buckets: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.supplier_buckets <= 4096:
            raise ValueError(f"warehouse.supplier_buckets={self.supplier_buckets} must be in 1..4096")


@dataclass(frozen=True)
class SparkConfig:
    """Spark settings applied when a job builds its session."""

    master: str = ""  # "" = keep spark-submit's --master, else local[*] when run by hand
    shuffle_partitions: int = 8  # spark.sql.shuffle.partitions (small data by default)
    executor_gpus: float = 0.0  # spark.executor.resource.gpu.amount; 0 = no GPU scheduling
    task_gpus: float = 0.0  # spark.task.resource.gpu.amount, e.g. 1 = one GPU per embed task
    gpu_discovery_script: str = ""  # spark.executor.resource.gpu.discoveryScript
    arrow_batch_rows: int = 256  # rows per Arrow batch fed to the encoder / pair search
    # JVM heaps (spark.driver.memory / spark.executor.memory). In local mode every task runs in
    # the driver, and Spark's 1g default ran out reading one supplier's 4,688 embeddings. Under
    # spark-submit they must be its --driver-memory / --executor-memory: the DAGs and
    # jobs.backfill pass them; a stage warns when its heap is smaller than asked.
    driver_memory: str = "4g"
    executor_memory: str = "4g"
    conf: dict[str, str] = field(default_factory=dict)  # any other spark.* setting, verbatim

    def __post_init__(self) -> None:
        for name in ("driver_memory", "executor_memory"):
            if not _MEMORY.match(str(getattr(self, name))):
                raise ConfigError(f"spark.{name}={getattr(self, name)!r}: use a JVM size such as 4g or 512m")


@dataclass(frozen=True)
class ValidationConfig:
    """Input validation."""

    fail_on_empty_day: bool = False  # True: a day with no input rows fails the run
    # titles longer than this many characters (Unicode code points) are quarantined as
    # title_too_long (the text model reads only the first encoder.text_max_tokens tokens, so a
    # pasted description would be silently cut); 0 = no limit
    max_title_chars: int = 1000
    # image_uri rules of the embed stage (schemas.uris.check_image_uri); a refused uri is not read
    # and the listing is embedded text-only with image_error "image_uri_not_allowed: ..."
    image_uri_schemes: tuple[str, ...] = ("file", "https")  # lower-case; "file" covers bare paths
    image_uri_roots: tuple[str, ...] = ()  # local folders image files may be read from; empty = none
    image_uri_hosts: tuple[str, ...] = ()  # remote hosts (".example.com": its subdomains); empty = none

    def __post_init__(self) -> None:
        problems = []
        if self.max_title_chars < 0:
            problems.append(f"validation.max_title_chars={self.max_title_chars} must be >= 0 (0 = no limit)")
        for name in ("image_uri_schemes", "image_uri_roots", "image_uri_hosts"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
                problems.append(f"validation.{name}={value!r} must be a list of non-empty strings")
            else:
                # a list from JSON (a run's resolved config) compares and hashes like the tuple
                object.__setattr__(self, name, tuple(value))
        schemes = self.image_uri_schemes if isinstance(self.image_uri_schemes, tuple) else ()
        bad = [s for s in schemes if not _URI_SCHEME.match(s)]
        if bad:
            problems.append(f"validation.image_uri_schemes: {bad} are not lower-case scheme names such as 'https'")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class SamplingConfig:
    """Positive training pairs from click logs (``jobs/sample_pairs.py``)."""

    category_level: int = 1  # both listings must share the first N levels of their category path
    category_separator: str = ">"  # splits a category path such as "Dairy > Milk > Oat"
    min_relevance: float = 0.5  # zero-shot title similarity (MiniLM cosine) a pair must reach
    max_pairs_per_trigger: int = 10  # keep the most relevant pairs of a trigger listing
    # The relevance model is the zero-shot MiniLM on titles only, whatever [encoder] says (the
    # pipeline's encoder is what the pairs will train); these keys are its own.
    relevance_batch_size: int = 64  # titles per MiniLM forward pass
    relevance_text_max_tokens: int = 64  # titles are cut to this many word-piece tokens
    relevance_device: str = "auto"  # "auto", "cpu", "cuda[:N]"
    relevance_num_threads: int = 1  # torch threads per Python worker; 0 = torch default

    def relevance_encoder(self) -> EncoderConfig:
        """Returns the encoder config of the relevance model (zero-shot, no lexical part)."""
        return EncoderConfig(
            kind="zero-shot",
            batch_size=self.relevance_batch_size,
            text_max_tokens=self.relevance_text_max_tokens,
            device=self.relevance_device,
            num_threads=self.relevance_num_threads,
        )

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
class TrainConfig:
    """Training of the sspr encoder's trainable parts (``python -m training.train``).

    The sources are read from ``paths.datasets_dir``; the model's own settings (text_max_tokens,
    image_size, device) come from ``[encoder]`` and the loss margins and weights from ``[loss]``.
    """

    out: str = "encoder/weights/sspr.safetensors"  # weights file to write; record at <out>.json
    checkpoint_dir: str = "var/train"  # step-NNNNNNN.pt checkpoints (created)
    sources: str = "wdc,grocery"  # comma list out of TRAIN_SOURCES
    max_steps: int = 2000  # optimizer steps in all; also the length of the cosine lr decay
    stop_after: int = 0  # stop after N steps of this process, schedule unchanged; 0 = max_steps
    max_minutes: float = 0.0  # stop after this many minutes of this process; 0 = no limit
    batch_size: int = 32  # pairs per text (WDC) batch, each from a different cluster
    image_batch_size: int = 16  # pairs per image (GroceryStore) batch; at most 31 (the SKUs)
    image_every: int = 4  # with both sources on, every N-th step is an image step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 20  # linear lr warm-up steps, then cosine decay to 10% at max_steps
    seed: int = 0  # seeds python, numpy, torch and the batch sampler
    top_k: int = 3  # hard-negative chain: the next cluster is one of the k most similar
    checkpoint_every: int = 50  # write a checkpoint every N steps (and always at the end)
    eval_every: int = 100  # every N steps log the AP of m-cosine on WDC valid_medium; 0 = off
    keep_best: bool = False  # write the weights with the best valid_medium AP (needs eval_every)
    threads: int = 0  # torch threads; 0 = torch's default (all cores)
    init_weights: str = ""  # start from this weights file instead of the seeded init
    # share of the training products (WDC train_medium clusters, GroceryStore SKUs; chosen by a
    # stable hash, benchmarks.datasets.in_verifier_share) kept out of the encoder's training for
    # the pair verifier (training.fit_verifier), so the verifier learns from similarities of pairs
    # the encoder never saw; 0 = the encoder trains on all of them. In [0, 0.9].
    verifier_share: float = 0.0
    # which side of verifier_share the encoder trains on: "outside" (the products outside the
    # share; the verifier trains on the share) or "inside" (the share only: the second encoder of
    # cross-fitting, training.fit_verifier --cross-fit)
    share_side: str = "outside"

    def source_list(self) -> tuple[str, ...]:
        """Returns ``sources`` as a tuple of names."""
        return tuple(s.strip() for s in self.sources.split(",") if s.strip())

    def __post_init__(self) -> None:
        problems = []
        sources = self.source_list()
        if not sources or any(s not in TRAIN_SOURCES for s in sources):
            problems.append(f"train.sources={self.sources!r}: use a comma list of {list(TRAIN_SOURCES)}")
        for name in ("max_steps", "image_every", "checkpoint_every", "top_k"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name}={getattr(self, name)} must be >= 1")
        for name in ("batch_size", "image_batch_size"):
            if getattr(self, name) < 2:
                problems.append(f"train.{name}={getattr(self, name)} must be >= 2")
        if self.lr <= 0:
            problems.append(f"train.lr={self.lr} must be > 0")
        for name in ("max_minutes", "stop_after", "eval_every", "threads", "warmup_steps"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name}={getattr(self, name)} must be >= 0")
        if self.keep_best and self.eval_every == 0:
            problems.append("train.keep_best needs train.eval_every > 0")
        if not 0.0 <= self.verifier_share <= 0.9:
            problems.append(f"train.verifier_share={self.verifier_share} must be in [0, 0.9]")
        if self.share_side not in ("outside", "inside"):
            problems.append(f"train.share_side={self.share_side!r} must be 'outside' or 'inside'")
        if self.share_side == "inside" and self.verifier_share == 0:
            problems.append("train.share_side='inside' needs train.verifier_share > 0 (else nothing is inside)")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class ReviewConfig:
    """The governance review app (``python -m review``, review/app.py)."""

    host: str = "127.0.0.1"  # the address it listens on; 127.0.0.1 = this machine only
    port: int = 8765
    decisions_db: str = "var/review/decisions.sqlite"  # SQLite file holding the review_decisions table
    secret_key_file: str = "var/review/secret.key"  # signs the session cookie; created (mode 0600) if missing
    suggestions_dir: str = "var/review/suggestions"  # recorded threshold suggestions, with provenance (JSON)
    # trust this request header (set by a single sign-on proxy in front) as the reviewer's
    # identity; "" = reviewers give their name on a sign-in form
    identity_header: str = ""
    page_size: int = 50  # groups per page of a night's list
    target_precision: float = 0.9  # the calibration page's default precision target
    # an image_uri a browser may load directly as <img src> (schemas.uris.renderable_image_src);
    # any other uri is shown only as a thumbnail the app re-encodes, or not at all
    image_src_schemes: tuple[str, ...] = ("https",)
    image_src_hosts: tuple[str, ...] = ()  # ".example.com" = its subdomains; empty = none

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"review.port={self.port} must be in 1..65535")
        if self.page_size < 1:
            problems.append(f"review.page_size={self.page_size} must be >= 1")
        if not 0 < self.target_precision <= 1:
            problems.append(f"review.target_precision={self.target_precision} must be in (0, 1]")
        for name in ("image_src_schemes", "image_src_hosts"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
                problems.append(f"review.{name}={value!r} must be a list of non-empty strings")
            else:
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.image_src_schemes, tuple) and not set(self.image_src_schemes) <= {"http", "https"}:
            problems.append(f"review.image_src_schemes={list(self.image_src_schemes)}: only http and https")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a command needs, composed from the component configs (one section each)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as plain JSON-serialisable dicts (section -> key -> value).

        Tuples become lists, as JSON has them, so the dict equals the JSON read back.
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        """Returns the config as indented JSON, for writing next to a stage's output.

        The metastore password is replaced by ``"***"`` (set or not): the file is a record, not a secret.
        """
        data = self.to_dict()
        if data["warehouse"]["metastore_password"]:
            data["warehouse"]["metastore_password"] = "***"
        return json.dumps(data, indent=2, sort_keys=True)
