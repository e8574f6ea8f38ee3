# One entry point for people and CI.  `make test` and `make demo` work on a fresh
# machine: they create .venv and install the project (with its dev extras) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= $(or $(STAMP_DATA_DIR),$(CURDIR)/../shared/data)

.PHONY: venv test lint demo bench clean

venv: $(VENV)/.installed

# native/: the compiled decoding fast path (Rust, PyO3), built when cargo is there; without
# it the worker runs its pure-Python path (same results, about twice the CPU per alert).
$(VENV)/.installed: pyproject.toml native/Cargo.toml native/pyproject.toml native/src/lib.rs
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	if command -v cargo >/dev/null; then $(BIN)/pip install --quiet ./native; \
	else echo "cargo not found: native/ not built, the pure-Python decoding path runs"; fi
	touch $@

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# The whole job end to end: local Kafka broker, the sample alerts (real ones from
# ../shared/data when present), the bundled model; prints labels per class and latencies.
demo: venv
	$(BIN)/stamp-worker demo

bench: venv
	$(BIN)/python bench/bench_decode.py --data "$(DATA)"

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache .hypothesis native/target

# Single-node Kafka 4 broker (KRaft) for development: `make kafka-start` prints
# KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT (folder .cache/kafka/run); needs java and, the
# first time, mvn (deploy/kafka/pom.xml).
.PHONY: kafka-start kafka-stop kafka-wipe
kafka-start: venv
	@$(BIN)/python deploy/kafka/kafka.py start

kafka-stop: venv
	@$(BIN)/python deploy/kafka/kafka.py stop

# Stop and delete the broker folder: its topics keep every message until then.
kafka-wipe: venv
	@$(BIN)/python deploy/kafka/kafka.py stop --wipe
