"""Text watermarks inside decoding: each row's `watermark.text.TextMarker` turns its logits into marked ones.

Called by `generate_tokens` and by continuous batching just before a token is sampled, with each row's text
so far. The green scheme adds delta to its green tokens' logits (the sampling settings then apply as usual);
the gumbel scheme computes the row's final distribution (its sampling settings, penalties included), picks
the keyed token from it and leaves only that token's logit, so whatever samples next takes it. Rows without a
marker are left as they are; the model's log-probabilities are computed from the unmarked logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["mark_logits", "histories"]


def histories(tokens: torch.Tensor, valid: torch.Tensor, width: int = 16) -> list[list[int]]:
    """Each row's last `width` real tokens, from left-padded tokens (B, T) and their mask."""
    return [row[ok].tolist() for row, ok in zip(tokens[:, -width:], valid[:, -width:])]


def mark_logits(logits: torch.Tensor, texts: Sequence[Sequence[int]], markers: Sequence, sampling,
                seen: torch.Tensor | None, counts: torch.Tensor | None, process: Callable) -> torch.Tensor:
    """Marked logits (B, V): row i through markers[i] (None: unchanged), given its text so far `texts[i]`.
    `sampling`: one `decoding.Sampling` or one per row; `process`: `decoding.process_logits` (passed in, so
    that decoding can call this module without a cycle)."""
    if all(m is None for m in markers):
        return logits
    rows = list(sampling) if isinstance(sampling, (list, tuple)) else [sampling] * len(markers)
    out = logits.float().clone()
    vocab = out.shape[-1]
    for i, marker in enumerate(markers):
        if marker is None:
            continue
        context = list(texts[i])
        if marker.mark.scheme == "green":
            green = torch.from_numpy(marker.green(context, vocab)).to(out.device)
            out[i] += marker.mark.delta * green
            continue
        marker.mark.check_sampling(rows[i].temperature)
        final = process(out[i:i + 1], rows[i], None if seen is None else seen[i:i + 1],
                        None if counts is None else counts[i:i + 1])
        choice = marker.choose(final.softmax(-1)[0].double().cpu().numpy(), context)
        if choice is not None:
            kept = out[i, choice].clone()
            out[i] = float("-inf")
            out[i, choice] = kept
    return out
