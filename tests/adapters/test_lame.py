"""LAME (adapters/lame.py) against the official dense computation (fiveai/LAME: kNN_affinity and
laplacian_optimization, with its energy read back to the host to stop), one sample at a time."""
import pytest
import torch
from torch.nn import functional as F

from driftseg.adapters.lame import knn_indices, lame


def _official(feats: torch.Tensor, probas: torch.Tensor, knn: int = 5, lam: float = 1.0, max_steps: int = 100):
    """feats [N, F], probas [N, K] -> (Y [N, K], the step it stopped at)."""
    unary = -torch.log(probas + 1e-10)
    feats = F.normalize(feats, p=2, dim=-1)
    n = feats.size(0)
    dist = torch.norm(feats.unsqueeze(0) - feats.unsqueeze(1), dim=-1, p=2)
    knn_index = dist.topk(min(knn + 1, n), -1, largest=False).indices[:, 1:]
    kernel = torch.zeros(n, n, dtype=feats.dtype)
    kernel.scatter_(dim=-1, index=knn_index, value=1.0)
    y = (-unary).softmax(-1)
    old_e = float("inf")
    for i in range(max_steps):
        pairwise = lam * kernel.matmul(y)
        y = (-unary + pairwise).softmax(-1)
        e = (unary * y - lam * pairwise * y + y * torch.log(y.clip(1e-20))).sum().item()
        if i > 1 and abs(e - old_e) <= 1e-8 * abs(old_e):
            break
        old_e = e
    return y, i


def _batch(seed: int, b: int = 2, c: int = 4, h: int = 5, w: int = 6):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, 7, h, w, generator=g, dtype=torch.float64)
    logits = 2 * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    return features, logits


@pytest.mark.parametrize("k, lam", [(5, 1.0), (3, 0.5)])
def test_lame_equals_the_official_computation_per_sample(k, lam) -> None:
    features, logits = _batch(seed=k)
    got = lame(features, logits, k=k, lam=lam)
    stops = []
    for i in range(2):
        y, stop = _official(features[i].flatten(1).T, logits[i].flatten(1).T.softmax(-1), k, lam)
        stops.append(stop)
        torch.testing.assert_close(got[i].flatten(1).T, y)
    assert min(stops) < 99  # stopped early: the masked steps after that changed nothing


def test_a_step_limit_stops_where_the_official_loop_would() -> None:
    features, logits = _batch(seed=9, b=1)
    y, stop = _official(features[0].flatten(1).T, logits[0].flatten(1).T.softmax(-1), max_steps=3)
    assert stop == 2
    torch.testing.assert_close(lame(features, logits, steps=3)[0].flatten(1).T, y)
    assert not torch.allclose(lame(features, logits, steps=3), lame(features, logits))


def test_neighbours_are_the_nearest_others() -> None:
    g = torch.Generator().manual_seed(1)
    f = F.normalize(torch.randn(1, 12, 3, generator=g, dtype=torch.float64), dim=-1)
    idx = knn_indices(f, 4)[0]
    dist = torch.cdist(f[0], f[0]).fill_diagonal_(float("inf"))
    assert torch.equal(idx.sort(-1).values, dist.topk(4, largest=False).indices.sort(-1).values)


def test_zero_lambda_is_the_network_softmax() -> None:
    features, logits = _batch(seed=2)
    torch.testing.assert_close(lame(features, logits, lam=0.0), (logits.softmax(1) + 1e-10) / (1 + 4e-10))
