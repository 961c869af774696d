# flatsam: `make bench-quick` (set up and run the one-minute benchmark), `make test` (set up and test).
PY := .venv/bin/python
# Benchmarks write to runs/bench/SUITE, never over the recorded folders under bench/; to re-record one:
# make bench BENCH_OUT=bench BENCH_FLAGS=--overwrite
BENCH_OUT ?= runs/bench
BENCH_FLAGS ?=
BENCH := $(PY) -m flatsam bench $(BENCH_FLAGS)

.PHONY: setup test test-slow bench bench-quick bench-all bench-long bench-ablation bench-tasks lint
setup: .venv/.installed
.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench-quick: setup
	$(PY) -m flatsam bench --quick --overwrite  # a scratch folder: each run replaces the last

bench: setup
	$(BENCH) --out $(BENCH_OUT)/default

bench-all: setup
	$(BENCH) --suite all --out $(BENCH_OUT)/all

bench-long: setup
	$(BENCH) --suite long-n40 --out $(BENCH_OUT)/long-n40
	$(BENCH) --suite long-n20 --out $(BENCH_OUT)/long-n20
	$(BENCH) --suite long-clean --out $(BENCH_OUT)/long-clean
	$(BENCH) --suite long-n40-crop --out $(BENCH_OUT)/long-n40-crop

bench-ablation: setup
	$(BENCH) --suite ablation --out $(BENCH_OUT)/ablation

bench-tasks: setup
	$(BENCH) --suite quant --out $(BENCH_OUT)/quant
	$(BENCH) --suite pose --out $(BENCH_OUT)/pose

lint: setup
	$(PY) -m ruff check src tests examples
