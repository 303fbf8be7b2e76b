"""The server's limits (no FastAPI import: the command line reads its defaults from here)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000      # larger request bodies get 413 (with or without a Content-Length)
    max_prompt_tokens: int = 4096        # longer prompts get 400
    max_tokens: int = 2048               # the largest max_tokens a request may ask for
    max_n: int = 8                       # the largest n (completions per prompt, images per request)
    max_steps: int = 250                 # the most diffusion sampler steps a request may ask for
    max_images: int = 16                 # the most images per request
    max_stop_length: int = 1000          # characters in one stop string (longer ones get 400)
    timeout: float = 300.0               # seconds a request may take, template and tokenizing included (503)
    queue_size: int = 64                 # jobs waiting per model before 429
    max_batch: int = 16                  # text rows decoded together
