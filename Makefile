# Two commands on a fresh machine: `make demo` and `make test`. Both create the
# virtual environment first if it is missing (pinned by constraints-cpu.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: env demo test

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo

test: $(STAMP)
	$(PY) -m pytest -q
