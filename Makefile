# One entry point for people and CI.  `make test` and `make demo` work on a fresh
# machine: they create .venv and install the project (with its dev extras) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= $(or $(STAMP_DATA_DIR),$(CURDIR)/../shared/data)

.PHONY: venv test lint demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# Decode + preprocess the real sample alerts (or built ones when ../shared/data is
# absent) and print what happens to each kind of alert.
demo: venv
	@if [ -f "$(DATA)/alerts_manifest.csv" ]; then \
	  $(BIN)/stamp-worker inspect --quiet "$(DATA)"; \
	else \
	  echo "no real alerts at $(DATA): using built ones"; \
	  $(BIN)/python -m worker.packets .cache/demo-alerts 200 && \
	  $(BIN)/stamp-worker inspect --quiet .cache/demo-alerts; \
	fi

bench: venv
	$(BIN)/python bench/bench_decode.py --data "$(DATA)"

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache .hypothesis

# Single-node Kafka 4 broker (KRaft) for development: `make kafka-start` prints
# KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT (folder .cache/kafka/run); needs java and, the
# first time, mvn (deploy/kafka/pom.xml).
.PHONY: kafka-start kafka-stop
kafka-start: venv
	@$(BIN)/python deploy/kafka/kafka.py start

kafka-stop: venv
	@$(BIN)/python deploy/kafka/kafka.py stop
