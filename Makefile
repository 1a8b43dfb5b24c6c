# Two entry points (README): `make demo` and `make test`. Both build the venv first; re-running is a no-op.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test regression regression-power wheel-check numpy-compat lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) run_bench.py --task coco_det --backbone random_vit_tiny --preset cpu

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n 2  # two workers: most tests wait on a subprocess or on single-threaded decoding

# Accuracy regression (CI, after the tests; README "The regression check"): the fixed weights' evaluation
# (deterministic, tolerance 0.02) and the ci presets at the CI seeds, two 1-thread runs side by side, checked
# against the baseline's seed spread (--tolerance auto). configs/regression.yaml holds the settings.
regression: $(STAMP)
	rm -rf runs/ci
	$(PY) -m benchmarks.tools.regression --out runs/ci

# What the regression check detects (not in CI: about an hour): benign and harmful changes, README's table.
regression-power: $(STAMP)
	$(PY) -m benchmarks.tools.regression_power --out runs/power

# The package as a user installs it (pip install ., no source tree): build the wheel, install it into
# a fresh venv and run the CLI from another folder. The fresh venv borrows the dependencies of $(VENV)
# through a .pth line (torch is GBs); the project itself comes only from the wheel.
WHL := .whl
wheel-check: $(STAMP)
	rm -rf $(WHL) && mkdir -p $(WHL)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHL) .
	rm -rf build  # setuptools' staging folder
	$(PYTHON) -m venv $(WHL)/venv
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$$($(WHL)/venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/deps.pth"
	$(WHL)/venv/bin/python -m pip install -q --no-deps --no-index $(WHL)/*.whl
	cd $$(mktemp -d) && $(CURDIR)/$(WHL)/venv/bin/python -c "import benchmarks, configs; assert all('/site-packages/' in m.__file__ for m in (benchmarks, configs)), configs.__file__" \
	  && $(CURDIR)/$(WHL)/venv/bin/run-bench --list-backbones > backbones.txt && grep -q mae_vit_b backbones.txt \
	  && $(CURDIR)/$(WHL)/venv/bin/run-bench --list-configs > configs.txt && grep -q upernet_vit_b configs.txt && grep -q "^table  *mae_table4" configs.txt \
	  && $(CURDIR)/$(WHL)/venv/bin/run-bench --task coco_det --backbone random_vit_tiny --preset cpu --dry-run --output-dir dry \
	  && test -f dry/load_report.json && test ! -e runs && echo "wheel check passed in $$PWD"

# The lowest numpy pyproject allows (1.26: detectron2 / mmcv environments pin numpy < 2), with the pandas and
# OpenCV releases that still support it; the rest is borrowed from $(VENV) as in wheel-check. Runs the tests
# that read detectron2's numpy-1.x pickles, the parity harness and the COCO evaluation, and the bad-input tests.
NP1 := $(WHL)/numpy1
numpy-compat: $(STAMP)
	rm -rf $(NP1) && mkdir -p $(WHL) && $(PYTHON) -m venv $(NP1)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$$($(NP1)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/deps.pth"
	$(NP1)/bin/python -m pip install -q "numpy==1.26.4" "pandas>=2.0,<3" "opencv-python-headless>=4.8,<4.11"
	$(NP1)/bin/python -c "import numpy; assert numpy.__version__ == '1.26.4', numpy.__version__"
	PYTHONPATH=$(CURDIR) $(NP1)/bin/python -m pytest -q -p no:cacheprovider tests/test_detectron2.py tests/test_bad_input.py

lint: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) runs $(WHL)
