"""Data sources, tokenizers and batching, per kind of content."""
