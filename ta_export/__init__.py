"""ta_export: merged weights, GGUF, Ollama Modelfile, vLLM/llama.cpp serving, export versions (see the README)."""
