# `make test` builds the pinned environments on first use, then runs every test:
#   .venv         Python 3.11, everything (torch, MONAI, slicer-core): the whole suite
#   .venv-slicer  only what Slicer 5.10 bundles (Python 3.12, its numpy, scipy, SimpleITK, ...) plus slicer-core:
#                 the self-test as Slicer runs it, and pip's resolution of what the module installs
#   .venv-py39    only what Slicer 5.8 bundles (Python 3.9, numpy 1.26): the engine tests that need no PyTorch
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SLICER_STAMP := .venv-slicer/.installed
PY39_STAMP := .venv-py39/.installed
INDEX := Testing/slicer_api_index.py
SLICER_CORE := slicer-core==5.11.0.6
PY312 = $(shell .ci/find-python 3.12 2>/dev/null || .ci/find-python 3.11)
PY39 = $(shell .ci/find-python 3.9 2>/dev/null)
# Engine tests that need neither PyTorch nor MRML: they must pass on Slicer 5.8's Python and numpy too.
PY39_TESTS := Testing/test_phantom.py Testing/test_postprocess.py Testing/test_volume.py Testing/test_volume_io.py \
	Testing/test_froc.py Testing/test_jobs.py Testing/test_evaluation_cli.py Testing/test_training_data.py \
	Testing/test_background.py

.PHONY: venv venv-slicer venv-py39 test test-py39 lint format demo screenshot clean

$(STAMP): requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# $(call bundled,FOLDER,PYTHON,SLICER RELEASE,MORE PACKAGES): a venv holding exactly the Python packages that
# Slicer release bundles (pip, setuptools and wheel first, as it has them), and MORE PACKAGES.
define bundled
	rm -rf $(1)
	$(2) -m venv $(1)
	$(1)/bin/python -m pip install --quiet $$($(2) $(INDEX) tools $(3))
	$(2) $(INDEX) requirements $(3) > $(1)/bundled.txt
	$(1)/bin/python -m pip install --quiet -r $(1)/bundled.txt $(4)
endef

$(SLICER_STAMP): $(INDEX) Testing/slicer_api/slicer-5.10.0.json.gz
	$(call bundled,.venv-slicer,$(PY312),5.10.0,$(SLICER_CORE) pytest==9.0.1)
	.venv-slicer/bin/python -m pip uninstall --quiet --yes matplotlib  # PyPI's vtk pulls it in; Slicer's VTK does not
	touch $@

# nibabel, matplotlib and pytest: the tests' and the command line's tools.
$(PY39_STAMP): $(INDEX) Testing/slicer_api/slicer-5.8.1.json.gz
	$(call bundled,.venv-py39,$(PY39),5.8.1,nibabel==5.3.2 matplotlib==3.9.4 pytest==8.3.5)
	touch $@

venv: $(STAMP)

venv-slicer: $(SLICER_STAMP)

venv-py39:
	@if [ -n "$(PY39)" ]; then $(MAKE) --no-print-directory $(PY39_STAMP); fi

demo: $(STAMP)
	$(BIN)/ctdeepseg demo -o results/demo

# The extension's screenshot, rendered offscreen (EGL) in Slicer's own slice views (slicer-core, trame-slicer).
screenshot: $(STAMP)
	test -x .venv-render/bin/python || ($(PYTHON) -m venv .venv-render && .venv-render/bin/python -m pip install --quiet \
		"trame-slicer[standalone]==2.0.0" $(SLICER_CORE) numpy==2.3.5 scipy==1.16.3 SimpleITK==2.5.3 packaging pillow)
	.venv-render/bin/python tools/render_screenshot.py --engine-python $(BIN)/python

test: $(STAMP) $(SLICER_STAMP) test-py39
	$(BIN)/python -m pytest -ra

test-py39: venv-py39
	@if [ -z "$(PY39)" ]; then echo "WARNING: no Python 3.9 here: the Slicer 5.8 engine run is left out (vermin still checks 3.9 syntax)"; \
	else .venv-py39/bin/python -m pytest -ra -q -p no:cacheprovider $(PY39_TESTS); fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin --target=3.9- --violations --eval-annotations --no-tips --quiet CTDeepSeg

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .venv-slicer .venv-py39 .venv-render .pytest_cache .ruff_cache
