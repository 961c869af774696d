# flatsam: `make bench-quick` (set up and run the one-minute benchmark), `make test` (set up and test).
PY := .venv/bin/python

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
	$(PY) -m flatsam bench --quick

bench: setup
	$(PY) -m flatsam bench --out bench/default

bench-all: setup
	$(PY) -m flatsam bench --suite all --out bench/all

bench-long: setup
	$(PY) -m flatsam bench --suite long-n40 --out bench/long-n40
	$(PY) -m flatsam bench --suite long-n20 --out bench/long-n20
	$(PY) -m flatsam bench --suite long-clean --out bench/long-clean

bench-ablation: setup
	$(PY) -m flatsam bench --suite ablation --out bench/ablation

bench-tasks: setup
	$(PY) -m flatsam bench --suite quant --out bench/quant
	$(PY) -m flatsam bench --suite pose --out bench/pose

lint: setup
	$(PY) -m ruff check src tests examples
