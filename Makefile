# Two commands for a newcomer: `make demo` and `make test`. Each bootstraps .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Train a small model if none exists, start embedded Kafka (Tansu) and Redis, stream, summarise.
demo: $(STAMP)
	$(BIN)/seqcast demo

## The test suite, against a real Redis and a real Kafka-protocol broker on loopback.
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m bench.stream

clean:
	rm -rf $(VENV) .pytest_cache
