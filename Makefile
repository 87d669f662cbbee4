# Both targets build .venv from nothing on a fresh machine.
# torch==2.13.0 goes in first: it resolves to the CPU build on local disk, and once it is
# there the project's own `torch==2.13.0` requirement installs nothing more.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dsonode-installed

.PHONY: run test lint bench bench-faults plots compose-test clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dsonode needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dsonode testnet --nodes 3 --duration 0 \
	    --rollouts examples/rollouts/math.jsonl --rollouts examples/rollouts/coding.jsonl \
	    --rollouts examples/rollouts/agents.jsonl

test: $(STAMP)
	$(BIN)/ruff check dsonode tests qa
	$(BIN)/ruff format --check dsonode tests qa
	$(BIN)/mypy dsonode
	# The lean embedder's folder, once per machine (~12 s; nodes would compile it at their
	# first start, inside some test's start timeout): a no-op when it is already compiled.
	$(BIN)/python -m dsonode.embed.compile
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check dsonode tests qa
	$(BIN)/ruff format --check dsonode tests qa
	$(BIN)/mypy dsonode

# The full fault, fuzz and crash campaign (RELIABILITY.md, BENCHMARKS.md `## faults`); qa/ is
# not installed, so it runs from this checkout: `make bench-faults ARGS="--json --seed 1"`.
bench-faults: $(STAMP)
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(BIN)/python -m qa.faults $(ARGS)

# Every picture of BENCHMARKS.md, redrawn from the JSON the benchmarks saved with `--json
# --save` (docs/bench/*.json -> docs/bench/*.png); needs the plots extra (in dev).
plots: $(STAMP)
	$(BIN)/python -m dsonode.bench.plots --src docs/bench --out docs/bench

# The docker-compose testnet built and run for real (qa/compose_test.py; README "Docker"):
# needs root, installs docker.io/docker-compose/debootstrap if missing, starts and stops its
# own dockerd, prints a JSON summary. Standard library only: no venv needed.
compose-test:
	$(PYTHON) -m qa.compose_test $(ARGS)

clean-venv:
	rm -rf $(VENV)
