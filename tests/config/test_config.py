"""Tests for the config package: defaults, the shipped TOML, precedence, coercion and error reporting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from config import ConfigError, PipelineConfig, load_config
from encoder.config import EncoderConfig

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "conf" / "sspr.toml"


def _write(tmp_path: Path, text: str, name: str = "conf.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults and the shipped file ---------------------------------------------------------------


def test_defaults_load_without_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, environ={})
    assert isinstance(cfg, PipelineConfig)
    assert cfg.dedup.min_similarity == 0.88
    assert cfg.dedup.backend == "faiss"
    assert cfg.spark.shuffle_partitions == 8
    assert cfg.spark.conf == {}
    assert cfg.encoder == EncoderConfig()
    assert cfg.warehouse.database == "dedup"
    # default relative paths resolve against the working directory
    assert cfg.paths.listings_root == str((tmp_path / "examples" / "listings").resolve())
    assert Path(cfg.paths.warehouse_dir).is_absolute()


def test_shipped_config_loads_and_paths_resolve_against_conf_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a different cwd must not change where the paths point
    cfg = load_config(SHIPPED, environ={})
    listings = Path(cfg.paths.listings_root)
    assert listings.is_absolute()
    assert listings.parts[-2:] == ("examples", "listings")
    assert listings == (REPO / "examples" / "listings").resolve()
    for name in ("warehouse_dir", "metastore_dir", "reports_dir", "runs_dir"):
        value = Path(getattr(cfg.paths, name))
        assert value.is_absolute(), name
        assert value.parent == (REPO / "var").resolve(), name
        assert not str(value).startswith(str(tmp_path)), name
    assert cfg.spark.shuffle_partitions == 2
    assert cfg.encoder.num_threads == 1
    # the encoder's files resolve against conf/ too, and exist
    assert Path(cfg.encoder.weights) == (REPO / "encoder" / "weights" / "sspr.safetensors").resolve()
    assert Path(cfg.encoder.lexical_idf) == (REPO / "encoder" / "weights" / "lexical-idf.npy").resolve()
    assert Path(cfg.encoder.weights).is_file() and Path(cfg.encoder.lexical_idf).is_file()
    assert 0.0 < cfg.dedup.min_similarity < 1.0


def test_shipped_config_same_result_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    here = load_config(SHIPPED, environ={})
    monkeypatch.chdir(tmp_path)
    there = load_config(SHIPPED, environ={})
    assert here == there


def test_relative_config_path_resolves_against_file_dir(tmp_path, monkeypatch):
    conf_dir = tmp_path / "a" / "conf"
    conf_dir.mkdir(parents=True)
    _write(conf_dir, '[paths]\nlistings_root = "../data/in"\nreports_dir = "/abs/reports"\n')
    monkeypatch.chdir(tmp_path / "a")
    cfg = load_config("conf/conf.toml", environ={})
    assert cfg.paths.listings_root == str((tmp_path / "a" / "data" / "in").resolve())
    assert cfg.paths.reports_dir == "/abs/reports"


def test_url_paths_are_left_untouched(tmp_path):
    path = _write(tmp_path, '[paths]\nwarehouse_dir = "s3a://bucket/warehouse"\n')
    cfg = load_config(path, environ={})
    assert cfg.paths.warehouse_dir == "s3a://bucket/warehouse"


# --- precedence -----------------------------------------------------------------------------------


def test_precedence_file_env_override(tmp_path):
    path = _write(tmp_path, "[dedup]\nmin_similarity = 0.5\n")
    assert load_config(path, environ={}).dedup.min_similarity == 0.5
    env = {"SSPR__DEDUP__MIN_SIMILARITY": "0.6"}
    assert load_config(path, environ=env).dedup.min_similarity == 0.6
    cfg = load_config(path, overrides={"dedup.min_similarity": "0.7"}, environ=env)
    assert cfg.dedup.min_similarity == 0.7
    # a layer only wins for the key it sets
    cfg = load_config(path, overrides={"dedup.max_results_per_query": "7"}, environ=env)
    assert cfg.dedup.min_similarity == 0.6
    assert cfg.dedup.max_results_per_query == 7


def test_env_is_read_from_os_environ_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SSPR__DEDUP__MIN_SIMILARITY", "0.42")
    monkeypatch.chdir(tmp_path)
    assert load_config(None).dedup.min_similarity == 0.42


def test_unrelated_env_vars_are_ignored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, environ={"SSPR_CONFIG": "x", "PATH": "/bin", "DEDUP__MIN_SIMILARITY": "9"})
    assert cfg.dedup.min_similarity == 0.88


def test_env_path_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(SHIPPED, environ={"SSPR__PATHS__REPORTS_DIR": "out/reports"})
    assert cfg.paths.reports_dir == str((tmp_path / "out" / "reports").resolve())


# --- coercion -------------------------------------------------------------------------------------


def test_string_coercion_from_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        None,
        overrides={
            "spark.shuffle_partitions": "16",
            "spark.executor_gpus": "0.5",
            "validation.fail_on_empty_day": "true",
            "spark.conf": '{"spark.executor.memory": "2g", "spark.foo": 3}',
            "encoder.batch_size": "8",
            "dedup.min_similarity": "0.9",
        },
        environ={},
    )
    assert cfg.spark.shuffle_partitions == 16 and type(cfg.spark.shuffle_partitions) is int
    assert cfg.spark.executor_gpus == 0.5 and type(cfg.spark.executor_gpus) is float
    assert cfg.validation.fail_on_empty_day is True
    assert cfg.spark.conf == {"spark.executor.memory": "2g", "spark.foo": "3"}
    assert cfg.encoder.batch_size == 8 and type(cfg.encoder.batch_size) is int
    assert cfg.dedup.min_similarity == 0.9 and type(cfg.dedup.min_similarity) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("TRUE", True), ("False", False), ("1", True), ("0", False)],
)
def test_bool_strings(text, expected):
    cfg = load_config(None, environ={"SSPR__VALIDATION__FAIL_ON_EMPTY_DAY": text})
    assert cfg.validation.fail_on_empty_day is expected


def test_toml_native_types_and_spark_conf_table(tmp_path):
    path = _write(
        tmp_path,
        "[validation]\nfail_on_empty_day = true\n"
        '[spark]\nshuffle_partitions = 4\nexecutor_gpus = 1\n[spark.conf]\n"spark.a" = "x"\n"spark.b" = 2\n',
    )
    cfg = load_config(path, environ={})
    assert cfg.validation.fail_on_empty_day is True
    assert cfg.spark.shuffle_partitions == 4
    assert cfg.spark.executor_gpus == 1.0 and type(cfg.spark.executor_gpus) is float
    assert cfg.spark.conf == {"spark.a": "x", "spark.b": "2"}


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"nosuch.key": "1"}, "unknown section [nosuch]"),
        ({"dedup.nosuch": "1"}, "dedup.nosuch is not a known key"),
        ({"spark.shuffle_partitions": "many"}, "expected an integer"),
        ({"dedup.min_similarity": "high"}, "expected a number"),
        ({"validation.fail_on_empty_day": "maybe"}, "expected true/false"),
        ({"spark.conf": "not json"}, "expected a JSON object"),
        ({"spark.conf": "[1, 2]"}, "expected a table"),
        ({"dedup.min_similarity": "2"}, "min_similarity=2.0 must be in [-1, 1]"),
        ({"dedup.backend": "annoy"}, "dedup.backend='annoy'"),
        ({"dedup.max_results_per_query": "0"}, "max_results_per_query must be >= 1"),
        ({"encoder.batch_size": "0"}, "encoder.batch_size=0"),
        ({"encoder.device": "tpu"}, "encoder.device='tpu'"),
        ({"encoder.kind": "clip"}, "encoder.kind='clip'"),
        ({"minsimilarity": "0.5"}, "expected section.key=value"),
    ],
)
def test_invalid_values_raise_config_error(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides=overrides, environ={})
    assert fragment in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_malformed_env_name_is_reported():
    with pytest.raises(ConfigError, match="SSPR__MIN_SIMILARITY"):
        load_config(None, environ={"SSPR__MIN_SIMILARITY": "0.5"})


def test_one_error_lists_every_parse_problem(tmp_path):
    path = _write(
        tmp_path,
        '[bogus]\nx = 1\n[dedup]\nmin_simil = 0.5\n[spark]\nshuffle_partitions = "lots"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"encoder.colour": "red"}, environ={"SSPR__DEDUP__MAX_RESULTS_PER_QUERY": "x"})
    message = str(info.value)
    assert "unknown section [bogus]" in message
    assert "dedup.min_simil is not a known key" in message
    assert "spark.shuffle_partitions: expected an integer" in message
    assert "encoder.colour is not a known key" in message
    assert "env: dedup.max_results_per_query: expected an integer" in message
    assert str(path) in message  # the file is named as the origin of its problems
    assert message.count("\n  - ") == 5


def test_one_error_lists_every_invalid_value():
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            overrides={"dedup.min_similarity": "2", "dedup.query_block_size": "0", "encoder.batch_size": "0"},
            environ={},
        )
    message = str(info.value)
    assert "min_similarity=2.0 must be in [-1, 1]" in message
    assert "query_block_size must be >= 1" in message
    assert "encoder.batch_size=0" in message


def test_one_error_lists_unknown_keys_and_invalid_values_together():
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"dedup.nosuch": "1", "dedup.min_similarity": "2"}, environ={})
    message = str(info.value)
    assert "dedup.nosuch is not a known key" in message
    assert "min_similarity=2.0 must be in [-1, 1]" in message


def test_float_in_toml_for_int_key_is_rejected(tmp_path):
    path = _write(tmp_path, "[encoder]\nbatch_size = 3.7\n")
    with pytest.raises(ConfigError, match="encoder.batch_size"):
        load_config(path, environ={})


def test_string_in_toml_for_str_key_only(tmp_path):
    path = _write(tmp_path, "[warehouse]\ndatabase = 5\n")
    with pytest.raises(ConfigError, match="warehouse.database: expected a string"):
        load_config(path, environ={})


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "sspr.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path):
    path = _write(tmp_path, "[dedup\nmin_similarity = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_section_that_is_not_a_table(tmp_path):
    path = _write(tmp_path, 'dedup = "x"\n')
    with pytest.raises(ConfigError, match=r"\[dedup\] must be a table"):
        load_config(path, environ={})


# --- output ---------------------------------------------------------------------------------------


def test_to_json_round_trips():
    cfg = load_config(SHIPPED, overrides={"spark.conf": '{"spark.a": "b"}', "dedup.min_similarity": "0.9"}, environ={})
    data = json.loads(cfg.to_json())
    assert data == cfg.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(PipelineConfig)}
    assert data["dedup"]["min_similarity"] == 0.9
    assert data["spark"]["conf"] == {"spark.a": "b"}
    assert data["encoder"]["batch_size"] == 32
    rebuilt = PipelineConfig(
        paths=type(cfg.paths)(**data["paths"]),
        warehouse=type(cfg.warehouse)(**data["warehouse"]),
        spark=type(cfg.spark)(**data["spark"]),
        validation=type(cfg.validation)(**data["validation"]),
        encoder=EncoderConfig(**data["encoder"]),
        dedup=type(cfg.dedup)(**data["dedup"]),
        sampling=type(cfg.sampling)(**data["sampling"]),
        train=type(cfg.train)(**data["train"]),
        loss=type(cfg.loss)(**data["loss"]),
    )
    assert rebuilt == cfg


def test_config_is_frozen():
    cfg = load_config(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dedup.min_similarity = 0.1  # type: ignore[misc]


def test_encoder_weights_path_resolves_against_the_config_file(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "sspr.toml"
    path.write_text('[encoder]\nkind = "sspr"\nweights = "../weights/sspr.safetensors"\n')
    cfg = load_config(path, environ={})
    assert cfg.encoder.weights == str((tmp_path / "weights" / "sspr.safetensors").resolve())
    assert load_config(None, environ={}).encoder.weights == ""  # empty stays empty


# --- list keys (validation.image_uri_*) -------------------------------------------------------------


def test_image_uri_defaults_deny_everything_not_configured():
    cfg = load_config(SHIPPED, environ={})
    assert cfg.validation.image_uri_schemes == ("file", "https")
    assert cfg.validation.image_uri_roots == ()
    assert cfg.validation.image_uri_hosts == ()
    assert load_config(None, environ={}).validation == cfg.validation


def test_image_uri_lists_from_toml_resolve_roots_against_the_config_file(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "sspr.toml"
    path.write_text(
        '[validation]\nimage_uri_schemes = ["file", "s3"]\nimage_uri_roots = ["../images", "/srv/img"]\n'
        'image_uri_hosts = ["img.example.com", ".cdn.example.net"]\n'
    )
    cfg = load_config(path, environ={})
    assert cfg.validation.image_uri_schemes == ("file", "s3")
    assert cfg.validation.image_uri_roots == (str((tmp_path / "images").resolve()), "/srv/img")
    assert cfg.validation.image_uri_hosts == ("img.example.com", ".cdn.example.net")


def test_image_uri_lists_from_flags_and_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        None,
        overrides={"validation.image_uri_roots": "imgs, /srv/img", "validation.image_uri_hosts": '["a.example.com"]'},
        environ={"SSPR__VALIDATION__IMAGE_URI_SCHEMES": "https"},
    )
    assert cfg.validation.image_uri_roots == (str(tmp_path / "imgs"), "/srv/img")
    assert cfg.validation.image_uri_hosts == ("a.example.com",)
    assert cfg.validation.image_uri_schemes == ("https",)
    assert load_config(None, overrides={"validation.image_uri_hosts": ""}, environ={}).validation.image_uri_hosts == ()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"validation.image_uri_schemes": "file,HTTPS"}, "['HTTPS'] are not lower-case scheme names"),
        ({"validation.image_uri_schemes": "https:"}, "['https:'] are not lower-case scheme names"),
        ({"validation.image_uri_hosts": "[1, 2]"}, "expected a list of strings"),
        ({"validation.image_uri_roots": "[not json"}, "expected a JSON array or a comma list"),
    ],
)
def test_invalid_image_uri_lists_raise_config_error(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides=overrides, environ={})
    assert fragment in str(info.value)


def test_image_uri_list_in_toml_is_an_array_or_a_comma_string(tmp_path):
    path = _write(tmp_path, '[validation]\nimage_uri_hosts = "img.example.com"\n')
    cfg = load_config(path, environ={})  # a string is a comma list, as from env vars and flags
    assert cfg.validation.image_uri_hosts == ("img.example.com",)
    path = _write(tmp_path, "[validation]\nimage_uri_hosts = 3\n")
    with pytest.raises(ConfigError, match="expected a list of strings"):
        load_config(path, environ={})


# --- JVM heaps ------------------------------------------------------------------------------------


def test_jvm_heaps_reach_spark_and_the_backfill_command():
    import argparse

    from jobs.backfill import stage_command
    from jobs.spark import jvm_bytes, spark_conf

    cfg = load_config(None, {"spark.driver_memory": "6g", "spark.executor_memory": "512m"}, environ={})
    conf = spark_conf(cfg)
    assert conf["spark.driver.memory"] == "6g" and conf["spark.executor.memory"] == "512m"
    assert jvm_bytes("6g") == 6 * 2**30 and jvm_bytes("512m") == 512 * 2**20
    args = argparse.Namespace(
        spark_submit="spark-submit", master="local[2]", end_date="2024-03-02", config=None, overrides=[], reembed=False
    )
    command = stage_command(args, "pairs", "2024-03-01", cfg.spark)
    assert command[command.index("--driver-memory") + 1] == "6g"
    assert command[command.index("--executor-memory") + 1] == "512m"
    assert "--py-files" not in command  # local mode: the packages are importable already
    args.py_files = "/opt/sspr/sspr_dedup.zip"
    command = stage_command(args, "pairs", "2024-03-01", cfg.spark)
    # spark-submit's options come before the application file
    assert command.index("--py-files") < command.index(str(REPO / "jobs" / "pairs.py"))
    assert command[command.index("--py-files") + 1] == "/opt/sspr/sspr_dedup.zip"


@pytest.mark.parametrize("value", ["4", "4gb", "0g", "-1g", "four"])
def test_a_bad_jvm_heap_is_refused(value):
    with pytest.raises(ConfigError, match="spark.driver_memory"):
        load_config(None, {"spark.driver_memory": value}, environ={})
