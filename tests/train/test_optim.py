import pytest
import torch
from torch import nn

from genloom.core.config import TrainConfig
from genloom.lm.transformer import Transformer, TransformerConfig
from genloom.train.optim import Muon, build_optimizer, orthogonalize


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_approximates_the_polar_factor(dtype):
    """In fp32 and in bf16 (what Muon uses where the run trains in bf16) alike."""
    g = torch.Generator().manual_seed(0)
    for shape in ((64, 32), (32, 96)):
        m = torch.randn(*shape, generator=g)
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        exact = u @ vh
        approx = orthogonalize(m, dtype=dtype)
        assert approx.dtype == torch.float32
        singular = torch.linalg.svdvals(approx)
        assert singular.min() > 0.6 and singular.max() < 1.25, singular
        cosine = (approx * exact).sum() / (approx.norm() * exact.norm())
        assert cosine > 0.95


def test_muon_covers_hidden_matrices_and_adamw_the_rest():
    model = Transformer(TransformerConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, d_model=16,
                                          tie_embeddings=False))
    opt = build_optimizer(model, list(model.parameters()), TrainConfig(optimizer="muon"))
    muon_params = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon_params}
    assert names == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.up.weight",
                     "blocks.0.mlp.down.weight"}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_adamw_branch_matches_torch_adamw():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours = Muon([{"params": list(a.parameters()), "use_muon": False}], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    for _ in range(5):
        x = torch.randn(4, 5)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_muon_iterates_in_the_runs_precision():
    model = Transformer(TransformerConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, d_model=16))
    config = TrainConfig(optimizer="muon")
    assert build_optimizer(model, list(model.parameters()), config).ns_dtype == torch.float32
    assert build_optimizer(model, list(model.parameters()), config, torch.bfloat16).ns_dtype == torch.bfloat16
