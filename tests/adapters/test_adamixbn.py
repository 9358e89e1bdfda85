"""AdaMixBN (adapters/adamixbn.py) against the released AdaMixBN's mixing written out here, with the
stream's EMA statistics as its target domain."""
import copy

import pytest
import torch
from pipeline_util import bn_net, run
from synthetic_frames import domain_frames
from torch import nn

from driftseg.adapters.adamixbn import AdaMixNet
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method


class _ReleasedMix(nn.Module):
    """AdaMixBN.get_lambd and get_mu_var (transform off) on one frame, with the target statistics an EMA
    (momentum m) of the stream's frames from the source's, kept here as mean and second moment."""

    def __init__(self, bn: nn.BatchNorm2d, m: float):
        super().__init__()
        self.bn, self.m = bn, m
        self.mu, self.sq = bn.running_mean.clone(), bn.running_var + bn.running_mean ** 2

    def forward(self, x):
        c = x.shape[1]
        src_mu, src_var = self.bn.running_mean.view(1, c, 1, 1), self.bn.running_var.view(1, c, 1, 1)
        instance_mu = x.mean((2, 3), keepdim=True)
        instance_std = x.var((2, 3), unbiased=False, keepdim=True).sqrt()
        self.mu = (1 - self.m) * self.mu + self.m * x.mean((0, 2, 3))
        self.sq = (1 - self.m) * self.sq + self.m * (x ** 2).mean((0, 2, 3))
        cur_mu, cur_var = self.mu.view(1, c, 1, 1), (self.sq - self.mu ** 2).view(1, c, 1, 1)
        it_dist = ((instance_mu - cur_mu) ** 2).mean(1, keepdim=True) + ((instance_std - cur_var.sqrt()) ** 2).mean(1, keepdim=True)
        is_dist = ((instance_mu - src_mu) ** 2).mean(1, keepdim=True) + ((instance_std - src_var.sqrt()) ** 2).mean(1, keepdim=True)
        st_dist = ((cur_mu - src_mu) ** 2).mean(1)[None] + ((cur_var.sqrt() - src_var.sqrt()) ** 2).mean(1)[None]
        lambd = torch.clip(1 - st_dist / (st_dist + is_dist + it_dist), min=0, max=1).mean(0, keepdim=True)
        mu, var = lambd * src_mu + (1 - lambd) * cur_mu, lambd * src_var + (1 - lambd) * cur_var
        return (x - mu) / (var + self.bn.eps).sqrt() * self.bn.weight.view(1, c, 1, 1) + self.bn.bias.view(1, c, 1, 1)


def _released(net: nn.Sequential, m: float) -> nn.Sequential:
    ref = copy.deepcopy(net)
    for i, module in enumerate(ref):
        if isinstance(module, nn.BatchNorm2d):
            ref[i] = _ReleasedMix(module, m)
    return ref


@pytest.mark.parametrize("m", [0.1, 0.5, 1.0])
def test_a_stream_equals_the_released_mixing_frame_by_frame(m) -> None:
    net = bn_net()
    mix, ref = AdaMixNet(net), _released(net, m)
    g = torch.Generator().manual_seed(4)
    moments = mix.source[None].clone()
    with torch.no_grad():
        for scale in (1.0, 2.0, 0.3, 1.5):
            frame = torch.rand(1, 3, 6, 7, generator=g) * scale
            logits, moments = mix(frame, moments, torch.tensor([m]), {})
            torch.testing.assert_close(logits, ref(frame), atol=1e-5, rtol=1e-4)
    layers = [module for module in ref if isinstance(module, _ReleasedMix)]
    torch.testing.assert_close(moments[0, 0], torch.cat([r.mu for r in layers]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(moments[0, 1], torch.cat([r.sq for r in layers]), atol=1e-6, rtol=1e-5)


def test_at_momentum_one_the_mix_is_half_source_half_frame(tiny_ckpt) -> None:
    """m = 1: the target is the frame itself (the released code at batch 1), lam = 1/2 in every layer."""
    frames = domain_frames(3, seed=6)
    labels, _ = run(Pipeline(tiny_ckpt, parse_method("adamixbn(m=1)")), frames)
    expected, _ = run(Pipeline(tiny_ckpt, parse_method("mixbn(lam=0.5)")), frames)
    assert (labels == expected).float().mean() > 0.999


def test_a_stream_like_the_source_keeps_the_source_statistics(tiny_ckpt) -> None:
    """Frames of the source domain leave every distance near 0 against a source-like target: the frozen
    model's labels, nearly everywhere."""
    frames = domain_frames(4, seed=0)  # the statistics tiny_ckpt was calibrated on
    labels, _ = run(Pipeline(tiny_ckpt, parse_method("adamixbn")), frames)
    frozen, _ = run(Pipeline(tiny_ckpt, parse_method("source")), frames)
    ptbn, _ = run(Pipeline(tiny_ckpt, parse_method("ptbn")), frames)
    assert (labels == frozen).float().mean() >= (labels == ptbn).float().mean()


@pytest.mark.parametrize("spec", ["adamixbn(m=0)", "adamixbn(m=1.5)"])
def test_bad_momentum_is_refused(spec) -> None:
    with pytest.raises(ValueError, match="adamixbn m"):
        parse_method(spec)
