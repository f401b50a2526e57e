"""HuggingFace checkpoint → GGUF for llama.cpp: layouts, vocabulary, streaming conversion."""
