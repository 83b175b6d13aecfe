# The front door: `make demo` sets everything up and trains on the embedded phantom;
# `make test` sets everything up and runs the test suite (CI runs exactly this).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := data/Task09_Spleen

.PHONY: setup demo test clean

setup: $(STAMP)

# torch first, pinned: 2.13.0 is a CPU build here, and the later `torch>=2.4` then installs nothing more
$(STAMP): pyproject.toml scripts/install_viewer_deps.sh
	bash scripts/install_viewer_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

$(DATA)/dataset.json: | $(STAMP)
	$(BIN)/unetr data synth $(DATA)

demo: setup $(DATA)/dataset.json
	$(BIN)/unetr train --task spleen --profile cpu-demo --out runs/demo --resume

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data
