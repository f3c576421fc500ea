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

.PHONY: install install-min cross-tools demo test clean bench bench-native bench-peers mutate mutate-report quant-bench import-bench profile-bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[export,sign,plot,test]'
	$(PY) -m pip install -q --no-deps tensorrt-stubs
	touch $@

# A second venv with the oldest versions the device side claims (pyproject's lower bounds, pinned
# by tests/min_deps.py, plus the click a Python 3.8 device gets) and edgelm without its extras:
# tests/test_device_python.py runs `edgelm run/profile/eval/devices/build` there. It is built on
# Python 3.8, JetPack 5's, where one is installed (on PATH, or pyenv's as on these machines), else
# on $(PYTHON); PYTHON_MIN overrides (a Python that numpy 1.24 has wheels for: 3.8-3.11).
VENV_MIN ?= .venv-min
PYTHON_38 := $(firstword $(foreach p,python3.8 $(wildcard $(HOME)/.pyenv/versions/3.8*/bin/python3.8),\
	$(shell $(p) -c 'import sys; print("$(p)" if sys.version_info[:2] == (3, 8) else "")' 2>/dev/null)))
PYTHON_MIN ?= $(or $(PYTHON_38),$(PYTHON))

install-min: $(VENV_MIN)/.installed

$(VENV_MIN)/.installed: pyproject.toml Makefile tests/min_deps.py $(VENV)/.installed
	test -x $(VENV_MIN)/bin/python || $(PYTHON_MIN) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install -q -U pip
	$(PY) tests/min_deps.py > $(VENV_MIN)/requirements-min.txt
	$(VENV_MIN)/bin/python -m pip install -q -r $(VENV_MIN)/requirements-min.txt
	$(VENV_MIN)/bin/python -m pip install -q --no-deps -e .
	$(VENV_MIN)/bin/python -m pip check
	touch $@

# The native C target compiles with the host's C compiler (gcc); its tests also cross-compile for
# aarch64 and run the result under qemu-user. Installed from Debian here when missing and we are
# root (CI); otherwise the ARM test says what to install and is skipped.
CROSS_PKGS = gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user

cross-tools:
	@if command -v cc >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(CROSS_PKGS) >/dev/null; \
	else \
		echo "note: C compiler / aarch64 cross tools missing; as root: apt-get install $(CROSS_PKGS)"; \
	fi

demo: install
	$(EDGELM) --version
	$(EDGELM) info $(DEMO_MODEL)
	$(EDGELM) eval $(DEMO_MODEL) --data $(HELDOUT)
	$(EDGELM) export $(DEMO_MODEL) --target cpu -o $(DEMO_OUT)/bundle-cpu --force
	$(EDGELM) keygen -o $(DEMO_OUT)/demo-key --force
	$(EDGELM) sign $(DEMO_OUT)/bundle-cpu --key $(DEMO_OUT)/demo-key
	$(EDGELM) run $(DEMO_OUT)/bundle-cpu --prompt "def " --max-bytes 300 --seed 0 --temperature 0.8 \
		--trusted-key $(DEMO_OUT)/demo-key.pub
	@echo
	$(EDGELM) profile $(DEMO_OUT)/bundle-cpu --streams 1,8 --bytes 256 --prompt-bytes 128 --json $(DEMO_OUT)/profile.json

# One pytest-xdist worker per core: the suite is single-threaded work (ONNX Runtime on one thread).
# Resident-memory tests (marked serial) then run alone in a fresh process.
# EDGELM_MIN_VENV: the device-side test fails (not skips) when install-min did not make it.
test: install install-min cross-tools
	EDGELM_MIN_VENV=$(abspath $(VENV_MIN)) $(PY) -m pytest -q -n auto -m "not serial"
	EDGELM_MIN_VENV=$(abspath $(VENV_MIN)) $(PY) -m pytest -q -m serial

# Issue 13's benchmark, one run on this machine (~40 min on 2 cores; not part of CI): edgelm's fp32 /
# fp16 / w8a8 / w4 bundles against PyTorch eager (oneDNN on and off), torch.ao dynamic int8, a plain
# torch.onnx.export in ONNX Runtime and ONNX Runtime's quantize_dynamic, on the trained tiny models,
# the char-RNN and random `small` presets; then batch-1 latency again with each model's systems
# interleaved (bench/latency.py), the sampling costs and the prefill chunk choice.
# Writes bench/results/{bench.json,bench.md,sampling_bench.json,prefill_chunk.json}. BENCH_ARGS
# passes options to bench/bench.py (e.g. BENCH_ARGS="--models lstm-tiny --quick").
BENCH_ARGS ?=

bench: install
	$(PY) bench/bench.py --out bench/results/bench.json $(BENCH_ARGS)
	$(PY) bench/latency.py --results bench/results/bench.json
	$(PY) bench/sampling_bench.py --out bench/results/sampling_bench.json
	$(PY) bench/prefill_chunk.py --out bench/results/prefill_chunk.json
	$(PY) bench/native_bench.py --out bench/results/native_bench.json

# Issue 14's benchmark alone (~10 min): the native C backend against the ONNX Runtime Session on the
# same bundles (fp32 and w8a8), batch 1 interleaved, 64 streams, 4 KB prefill, the GEMM floor.
bench-native: install
	$(PY) bench/native_bench.py --out bench/results/native_bench.json

# Issue 16's benchmark (not part of `make bench` or CI): edgelm against llama.cpp on the same Mamba
# weights, one thread. llama.cpp's source comes from the llama-cpp-python sdist on PyPI; llama-bench
# and llama-batched-bench are built once into PEERS_CACHE (~/.cache/edgelm-peers; ~10 min on 2
# cores). Writes bench/results/llamacpp_bench.{json,md}.
bench-peers: install
	$(PY) bench/llamacpp_bench.py --out bench/results/llamacpp_bench.json

# Mutation testing (not part of `make test` or CI: hours on 2 cores). Builds build/mutate/<group>/
# workspaces and writes bench/results/mutation.json; see bench/mutation.py. MUTATE_MODULES picks
# the groups that mutate those modules (e.g. MUTATE_MODULES="runtime/sampling.py"); MUTATE_ARGS=--resume
# continues an interrupted run, "--resume --retest-survivors" tests the unexplained survivors again.
MUTMUT_VERSION := 3.8.1
MUTATE_MODULES ?=
MUTATE_JOBS ?= 2
MUTATE_ARGS ?=

$(VENV)/.mutmut-$(MUTMUT_VERSION): $(VENV)/.installed
	$(PY) -m pip install -q mutmut==$(MUTMUT_VERSION)
	touch $@

mutate: $(VENV)/.mutmut-$(MUTMUT_VERSION)
	nice $(PY) bench/mutation.py run --jobs $(MUTATE_JOBS) $(MUTATE_ARGS) $(MUTATE_MODULES)

mutate-report: $(VENV)/.mutmut-$(MUTMUT_VERSION)
	$(PY) bench/mutation.py report

# Issue 10's quantization benchmark (~25 min on 2 cores): edgelm's w8/w8a8-naive/w8a8/w4 bundles next
# to ORT quantize_dynamic/quantize_static and torch.ao dynamic int8 on every reference model. Writes
# bench/results/quant_bench.json and bench/results/quant_bench.md; QUANT_BENCH_ARGS passes options
# (e.g. QUANT_BENCH_ARGS="--models lstm --recipes w8,w8a8").
QUANT_BENCH_ARGS ?=

quant-bench: install
	$(PY) bench/quant_bench.py --out bench/results/quant_bench.json $(QUANT_BENCH_ARGS)

# Issue 11's import benchmark (~3 min): an imported transformers Mamba in an edgelm Session vs
# transformers' own cached generation of the same model. Writes bench/results/import_bench.json.
import-bench: install
	$(PY) bench/import_bench.py --out bench/results/import_bench.json

# Issue 12's profiler checks (~2 min): `edgelm profile` p50 against an independent greedy loop and
# against the cpu roofline estimate, per reference model. Writes bench/results/profile_bench.json.
profile-bench: install
	$(PY) bench/profile_bench.py --out bench/results/profile_bench.json

clean:
	rm -rf $(VENV) $(VENV_MIN) build dist *.egg-info
