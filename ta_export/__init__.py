"""ta_export: merged weights, GGUF, Ollama Modelfile, vLLM/llama.cpp serving, versions (to come)."""
