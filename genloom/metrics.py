"""Distances between sets of features: Fréchet distance, KID and precision/recall.

The formulas behind FID, KID and improved precision/recall, on (N, D) features from any network. Content
types use them with a small network genloom trains on their data (so the numbers are named after the data,
e.g. FID-digits), or with standard feature networks where a user supplies their weights. Everything is
computed in float64 on the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core.errors import GenloomError


def _check_features(real: Tensor, fake: Tensor, minimum: int = 2) -> tuple[Tensor, Tensor]:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise GenloomError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if real.shape[0] < minimum or fake.shape[0] < minimum:
        raise GenloomError(f"need at least {minimum} real and {minimum} generated samples, "
                           f"got {real.shape[0]} and {fake.shape[0]}")
    return real.detach().double().cpu(), fake.detach().double().cpu()


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (round-off negatives clipped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½) between Gaussians fitted to two sets (Heusel et al. 2017, eq. 6).

    Tr (S1 S2)^½ is the sum of the singular values of S1^½ S2^½ (the eigenvalues of S1 S2 are those of
    S1^½ S2 S1^½ = (S1^½ S2^½)(S1^½ S2^½)ᵀ), which stays accurate where the covariances are singular.
    """
    real, fake = _check_features(real_features, fake_features)
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    cov_real, cov_fake = torch.cov(real.T), torch.cov(fake.T)                 # (D, D), unbiased
    cov_real, cov_fake = cov_real.reshape(real.shape[1], -1), cov_fake.reshape(fake.shape[1], -1)  # D = 1 too
    cross = torch.linalg.svdvals(_psd_sqrt(cov_real) @ _psd_sqrt(cov_fake)).sum()
    return max(float(mean_term + cov_real.trace() + cov_fake.trace() - 2 * cross), 0.0)


def kernel_inception_distance(real_features: Tensor, fake_features: Tensor, subsets: int = 100,
                              subset_size: int = 1000, generator: torch.Generator | None = None) -> tuple[float, float]:
    """Unbiased MMD² with the kernel k(x, y) = (xᵀy / d + 1)³ (Bińkowski et al. 2018), as (mean, std) over
    `subsets` random subsets of `subset_size` samples of each set (fewer if a set is smaller)."""
    real, fake = _check_features(real_features, fake_features)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    m = min(subset_size, real.shape[0], fake.shape[0])
    dim = real.shape[1]
    estimates = []
    for _ in range(subsets):
        x = real[torch.randperm(real.shape[0], generator=generator)[:m]]    # (m, D)
        y = fake[torch.randperm(fake.shape[0], generator=generator)[:m]]
        k_xx, k_yy, k_xy = [(a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]  # (m, m) each
        # The within-set sums leave out k(x_i, x_i): the unbiased estimator of Gretton et al. (2012).
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        estimates.append(within - 2 * k_xy.mean())
    values = torch.stack(estimates)
    return float(values.mean()), (float(values.std()) if subsets > 1 else 0.0)


def _kth_neighbour_radius(points: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    return torch.cat([torch.cdist(points[i:i + chunk], points).kthvalue(k + 1, dim=1).values   # +1: itself
                      for i in range(0, points.shape[0], chunk)])


def _fraction_inside(queries: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> float:
    """Fraction of `queries` that lie inside at least one ball (centre_j, radius_j)."""
    inside = [(torch.cdist(queries[i:i + chunk], centres) <= radii).any(dim=1)
              for i in range(0, queries.shape[0], chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real_features: Tensor, fake_features: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision is the fraction of generated
    samples inside the real manifold (the union of balls reaching each real sample's k-th neighbour),
    recall the fraction of real samples inside the generated manifold."""
    real, fake = _check_features(real_features, fake_features, minimum=k + 1)
    precision = _fraction_inside(fake, real, _kth_neighbour_radius(real, k))
    recall = _fraction_inside(real, fake, _kth_neighbour_radius(fake, k))
    return precision, recall
