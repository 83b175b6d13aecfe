# The front door: `make demo` sets up what training needs and trains on the embedded phantom;
# `make test` sets everything up and runs the test suite (CI runs exactly this).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CORE: torch and the core package (train, predict, evaluate, plan: no Qt, no extras), what the demo needs;
# STAMP: that and every extra (review, export, dicom, track) and the test tools
CORE := $(VENV)/.core
STAMP := $(VENV)/.installed
DATA := data/Task09_Spleen

# torch pinned: 2.13.0 is a CPU build here, and the package's `torch>=2.4` then installs nothing more.
# pip byte-compiles on one core; compileall afterwards uses every core. It leaves out files written for
# other Python versions (torch ships some), as pip does, hence the `|| true`.
PIP := $(BIN)/pip install --quiet --no-compile
COMPILE := $(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true

.PHONY: setup demo test clean

setup: $(STAMP)

$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 -e .
	$(COMPILE)
	touch $(CORE)

$(STAMP): $(CORE) scripts/install_viewer_deps.sh
	bash scripts/install_viewer_deps.sh
	$(PIP) -e '.[all,dev]'
	$(COMPILE)
	touch $(STAMP)

$(DATA)/dataset.json: | $(CORE)
	$(BIN)/unetr data synth $(DATA)

demo: $(CORE) $(DATA)/dataset.json
	$(BIN)/unetr train --task spleen --profile cpu-demo --out runs/demo --resume

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data
