# flatsam: `make bench-quick` (set up and run the one-minute benchmark), `make test` (set up and test).
PY := .venv/bin/python
# Benchmarks write to runs/bench/SUITE, never over the recorded folders under bench/; to re-record one:
# make bench BENCH_OUT=bench BENCH_FLAGS=--overwrite
BENCH_OUT ?= runs/bench
BENCH_FLAGS ?=
BENCH := $(PY) -m flatsam bench $(BENCH_FLAGS)

.PHONY: setup test test-slow bench bench-quick bench-all bench-long bench-ablation bench-tasks grid grid-report lint docs wheel gpu-check
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

# The robust-promise grid's seven held-out settings (bench/README, "The grid"), two one-thread workers, longest
# first, into GRID_OUT; resumable: run it again after a stop and finished runs are kept, unfinished ones
# continue from their checkpoints. Run it only after the tuned presets are committed.
GRID_OUT ?= bench
grid: setup
	$(PY) -m flatsam.train.grid | xargs -P 2 -I{} $(PY) -m flatsam bench --suite {} --out $(GRID_OUT)/{} --resume --no-progress
	$(MAKE) grid-report

grid-report: setup
	$(PY) -m flatsam report --grid $(GRID_OUT)

lint: setup
	$(PY) -m ruff check src tests examples

# The documentation site (mkdocs, strict: a broken link or API reference fails) into site/; the docs extra
# is installed on first use.
docs: setup
	$(PY) -c "import mkdocs, mkdocstrings, material" 2>/dev/null || $(PY) -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The wheel and sdist into dist/, checked by twine; the release extra is installed on first use.
wheel: setup
	$(PY) -c "import build, twine" 2>/dev/null || $(PY) -m pip install --quiet -e ".[release]"
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

# The GPU check (docs/data-and-gpu.md): CUDA tests, step times of ResNet-18 and WRN-28-10, short CIFAR-shaped
# runs and the paper suites' dry-runs into GPU_CHECK_OUT; without CUDA it runs the CPU part (about a minute).
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check: setup
	$(PY) -m flatsam.train.gpu_check --out $(GPU_CHECK_OUT)
