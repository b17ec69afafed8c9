# sspr-dedup: `make nightly` runs the nightly DAG on the sample listings, `make test` runs the tests.
# Both install everything first (a venv in .venv; Python 3.11 and Java 17 must be on PATH).
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin

export PATH := $(BIN):$(PATH)
export PYSPARK_PYTHON := $(BIN)/python
export SPARK_LOCAL_IP := 127.0.0.1
export AIRFLOW_HOME := $(abspath var/airflow)
export AIRFLOW__CORE__DAGS_FOLDER := $(abspath dags)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export AIRFLOW_CONN_SPARK_DEFAULT := {"conn_type": "spark", "host": "local[*]"}
export SSPR_CONFIG ?= $(abspath conf/sspr.toml)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TQDM_DISABLE := 1

.PHONY: install browser postgres nightly review lint test test-fast evaluate train folds lexical verifier pyfiles clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install: $(VENV)/.installed  ## create .venv and install the project with its test extras

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

browser:  ## apt-get install chromium + chromedriver for the review app's browser test (no-op when present)
	bin/install-browser

postgres:  ## apt-get install postgresql + its JDBC driver for the shared-metastore tests (no-op when present)
	bin/install-postgres

nightly: install  ## run the nightly DAG (airflow dags test) over every sample day, then print a summary
	bin/run-sample-nightly

review: install  ## start the governance review app on the warehouse's nights: http://127.0.0.1:8765 (after make nightly)
	$(BIN)/python -m review --config $(SSPR_CONFIG)

pyfiles:  ## build var/dist/sspr_dedup.zip, the --py-files archive for executors on a cluster (SSPR_PY_FILES)
	$(PYTHON) bin/build-pyfiles --out var/dist/sspr_dedup.zip

lint: install  ## ruff lint and format check (configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint browser postgres  ## lint, then the whole test suite (unit, Spark, DAG and end-to-end)
	$(BIN)/python -m pytest

test-fast: lint browser postgres  ## lint, then the tests without the end-to-end DAG run
	$(BIN)/python -m pytest -m "not e2e"

evaluate: install  ## measure match quality on ../shared/datasets: bench/results/quality.json + bench/README.md
	$(BIN)/python -m evaluation --config conf/sspr.toml --compare 'sspr=conf/sspr.toml,encoder.lexical_weight=0' \
	  --compare 'zero-shot=conf/sspr.toml,encoder.kind=zero-shot,encoder.weights=,encoder.lexical_weight=0'

lexical: install  ## fit the hybrid encoder's IDF table on WDC train titles into encoder.lexical_idf of conf/sspr.toml
	$(BIN)/python -m training.fit_lexical --config conf/sspr.toml

FOLDS := var/folds
verifier: install  ## cross-fit and calibrate the pair verifier into dedup.verifier of conf/sspr.toml (~3 min, after make folds); paste the [dedup] lines it logs
	$(BIN)/python -m training.fit_verifier --config conf/sspr.toml --cross-fit $(FOLDS)/outside.safetensors,$(FOLDS)/inside.safetensors

train: install  ## train the sspr encoder on ../shared/datasets into encoder/weights/sspr.safetensors ([train] of conf/sspr.toml, ~40 min)
	$(BIN)/python -m training.train --config conf/sspr.toml

folds: install  ## train the verifier's two cross-fitting encoders (each half of the products, as [train]) into var/folds/ (~2 x 40 min)
	$(BIN)/python -m training.train --config conf/sspr.toml --set train.verifier_share=0.5 --set train.share_side=outside \
	  --out $(FOLDS)/outside.safetensors --checkpoint-dir $(FOLDS)/outside-ckpt
	$(BIN)/python -m training.train --config conf/sspr.toml --set train.verifier_share=0.5 --set train.share_side=inside \
	  --out $(FOLDS)/inside.safetensors --checkpoint-dir $(FOLDS)/inside-ckpt

clean:  ## remove the local warehouse, metastore, Airflow state and reports (var/)
	rm -rf var
