# Two entry points on a fresh machine: `make demo` and `make test`.
# torch is pinned: on these machines torch==2.13.0 is a local CPU wheel, while a plain
# `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGELM := $(VENV)/bin/edgelm
DEMO_MODEL ?= models/mamba-tiny.pt
# Held-out text every Python has and the reference models never saw in training.
HELDOUT = $$($(PY) -c 'import textwrap; print(textwrap.__file__)')
DEMO_OUT ?= build/demo

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[export,sign,test]'
	$(PY) -m pip install -q --no-deps tensorrt-stubs
	touch $@

demo: install
	$(EDGELM) --version
	$(EDGELM) info $(DEMO_MODEL)
	$(EDGELM) eval $(DEMO_MODEL) --data $(HELDOUT)
	$(EDGELM) export $(DEMO_MODEL) --target cpu -o $(DEMO_OUT)/bundle-cpu --force
	$(EDGELM) run $(DEMO_OUT)/bundle-cpu --prompt "def " --max-bytes 300 --seed 0 --temperature 0.8
	@echo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info
