"""UnMix-TNS (adapters/unmixtns.py) against the released UnMixTNS2d written out here, one stream at a time."""
import copy
import math

import pytest
import torch
from pipeline_util import bn_net, run
from synthetic_frames import domain_frames
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.adapters.unmixtns import UnMixNet


class _ReleasedUnMix(nn.Module):
    """UnMixTNS2d.forward of the released code (its batch: one frame), components started as given."""

    def __init__(self, bn: nn.BatchNorm2d, means: torch.Tensor, variances: torch.Tensor, momentum: float, temp: float):
        super().__init__()
        self.bn, self.means, self.vars, self.momentum, self.temp = bn, means.clone(), variances.clone(), momentum, temp

    def forward(self, x):
        inst_mean = x.mean(dim=[2, 3])
        inst_var = x.var(dim=[2, 3], unbiased=False)
        sim = torch.einsum("bc,kc->bk", F.normalize(inst_mean, dim=1), F.normalize(self.means, dim=1))
        probs = torch.softmax(sim / self.temp, dim=1)
        mean_mat = (1. - probs.unsqueeze(-1)) * self.means.unsqueeze(0) + probs.unsqueeze(-1) * inst_mean.unsqueeze(1)
        var_mat = (1. - probs.unsqueeze(-1)) * self.vars.unsqueeze(0) + probs.unsqueeze(-1) * inst_var.unsqueeze(1)
        mean = mean_mat.mean(1)
        var = var_mat.mean(1) + (mean_mat ** 2).mean(1) - mean_mat.mean(1) ** 2
        self.means = self.means + self.momentum * (probs.unsqueeze(-1) * (inst_mean.unsqueeze(1) - self.means)).mean(0)
        self.vars = self.vars + self.momentum * (probs.unsqueeze(-1) * (inst_var.unsqueeze(1) - self.vars)).mean(0)
        b, c = mean.shape
        x = (x - mean.view(b, c, 1, 1)) / torch.sqrt(var.view(b, c, 1, 1) + self.bn.eps)
        return x * self.bn.weight.view(1, -1, 1, 1) + self.bn.bias.view(1, -1, 1, 1)


def _released(net: nn.Sequential, start: torch.Tensor, momentum: float, temp: float) -> nn.Sequential:
    ref, offset = copy.deepcopy(net), 0
    for i, m in enumerate(ref):
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            ref[i] = _ReleasedUnMix(m, start[0, :, offset:offset + c], start[1, :, offset:offset + c], momentum, temp)
            offset += c
    return ref


def _frames(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 6, 7, generator=g) * (0.5 + torch.rand(n, 3, 1, 1, generator=g))


@pytest.mark.parametrize("k,m,temp", [(16, 0.3, 0.07), (4, 0.05, 0.5), (1, 0.2, 0.07)])
def test_a_stream_equals_the_released_layers_frame_by_frame(k, m, temp) -> None:
    net = bn_net()
    unmix = UnMixNet(net, k, temp, m)
    ref = _released(net, unmix.source, m, temp)
    state = unmix.source[None].clone()
    with torch.no_grad():
        for frame in _frames(5, seed=3):
            logits, state = unmix(frame[None], state, {})
            torch.testing.assert_close(logits, ref(frame[None]), atol=1e-5, rtol=1e-4)
    layers = [m for m in ref if isinstance(m, _ReleasedUnMix)]
    torch.testing.assert_close(state[0, 0], torch.cat([r.means for r in layers], 1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(state[0, 1], torch.cat([r.vars for r in layers], 1), atol=1e-6, rtol=1e-5)


def test_components_start_around_the_source_statistics() -> None:
    net = bn_net()
    source = UnMixNet(net, 512, 0.07, 0.1).source  # many components: the sample moments approach the expected
    bn = net[1]
    mean_of_means, mean_var = source[0, :, :4].mean(0), source[1, :, :4].mean(0)
    # the equal mixture of the components: the source mean; its variance the source variance (in expectation)
    mixture_var = mean_var + source[0, :, :4].var(0, unbiased=False)
    spread = bn.running_var.sqrt() * math.sqrt(0.5 * 512 / 511)
    assert ((mean_of_means - bn.running_mean).abs() < 4 * spread / math.sqrt(512)).all()
    torch.testing.assert_close(mean_var, 0.5 * bn.running_var)
    torch.testing.assert_close(mixture_var, bn.running_var, rtol=0.2, atol=0.0)
    one = UnMixNet(net, 1, 0.07, 0.1).source
    torch.testing.assert_close(one[:, 0, :4], torch.stack([bn.running_mean, bn.running_var]))
    torch.testing.assert_close(UnMixNet(net, 16, 0.07, 0.1).source, UnMixNet(net, 16, 0.07, 0.1).source)  # seeded


def test_one_component_is_prediction_time_bn(tiny_ckpt) -> None:
    """With K = 1 the only component takes the whole frame (p = 1): each frame normalised by its own
    statistics, as ptbn does, whatever the momentum."""
    frames = domain_frames(4, seed=5)
    labels, _ = run(Pipeline(tiny_ckpt, parse_method("unmixtns(k=1,m=0.5)")), frames)
    expected, _ = run(Pipeline(tiny_ckpt, parse_method("ptbn")), frames)
    assert (labels == expected).float().mean() > 0.999


@pytest.mark.parametrize("spec,message", [("unmixtns(k=0)", "unmixtns k"), ("unmixtns(temp=0)", "unmixtns temp"),
                                          ("unmixtns(m=2)", "unmixtns m")])
def test_bad_parameters_are_refused(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_method(spec)
