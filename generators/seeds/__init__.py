"""Seed captions: the pool the LLM rewrites from (a file, a local Hugging Face dataset, or built-in topics)."""
