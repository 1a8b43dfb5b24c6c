# Two entry points (README): `make demo` and `make test`. Both build the venv first; re-running is a no-op.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test regression lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) run_bench.py --task coco_det --backbone random_vit_tiny --preset cpu

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# Accuracy regression (CI, after the tests): the CPU presets (the miniature's random row: two 1-thread
# runs side by side), collected, checked against the baseline.
# Tolerance 3 points: same seeds give the same numbers on one machine, but another CPU's kernels can
# move a 400-iteration run by ~2 points; a real regression (lr off by 100x) costs tens of points.
regression: $(STAMP)
	rm -rf runs/ci
	$(PY) -m benchmarks.miniature --rows random --jobs 2 --threads 1 --out runs/ci
	$(PY) -m results.collect runs/ci --check results/baselines/cpu.json --tolerance 3

lint: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) runs
