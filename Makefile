# Two commands on a fresh machine with only Python: `make run` and `make test`.
# Each creates the virtual environment and installs what is missing first.
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= ../shared/grocery-store-dataset
# PyPI's torch is the CUDA build on Linux (a 6.9 GB venv, GPU or not); on a machine without a GPU,
# `make run TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs the CPU-only build instead.
TORCH_INDEX ?=
BIN := $(VENV)/bin
# Re-install when the project's dependencies change.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The torch builds this project is tested with (CPU-capable; CUDA when a GPU is present).
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	rm -f $(VENV)/.installed-* && touch $@

# The whole service: embedded PostgreSQL and Redis (files under var/embedded) unless DATABASE_URL and REDIS_URL
# are set, migrations, one worker process per core on both queues, the API on http://127.0.0.1:$GROCERY_PORT
# (default 8000). It says "up" once the API and the workers are ready; Ctrl-C stops it all. Non-zero exit: it
# could not start (a taken port, say), and said why.
run: $(STAMP)
	GROCERY_DATA_DIR=$${GROCERY_DATA_DIR:-$(DATA_DIR)} $(BIN)/python -m cli.stack

test: $(STAMP) lint
	$(BIN)/python -m pytest --durations=25

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# About 4-5 hours on 2 cores: 5-fold cross-validation of two recipes (about 20 min a fold), then the default
# recipe trained through the service and measured through the whole system.
# bench_prediction and bench_interactive measure the model users serve: the one bench_bulk trains through the service.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_accuracy.py --data-dir $(DATA_DIR) --recipes default,old_default \
		--fold-groups benchmarks/folds/near-duplicates-0.85.json --output runs/bench/kfold
	$(BIN)/python benchmarks/bench_training.py --data-dir $(DATA_DIR)
	$(BIN)/python benchmarks/bench_bulk.py --data-dir $(DATA_DIR) --model-dir runs/bench/models
	model=$$(ls -dt runs/bench/models/*/attempt-* | head -1) && \
		$(BIN)/python benchmarks/bench_prediction.py --data-dir $(DATA_DIR) --model $$model && \
		$(BIN)/python benchmarks/bench_interactive.py --data-dir $(DATA_DIR) --model $$model
	$(BIN)/python benchmarks/bench_load.py --data-dir $(DATA_DIR) --seconds 90
	$(BIN)/python benchmarks/bench_ui.py --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
