"""DIGA (adapters/diga.py) against the released code's computations written out here: its BN layer
(SIFABatchNorm2d in eval mode) and its semantic module (cal_proto, _update_classifier_proto with the
pseudo-labels in place of the ground truth, cal_pred_of_proto, the two fusions), loop by loop."""
import copy

import pytest
import torch
from pipeline_util import bn_net
from synthetic_frames import domain_frames
from torch import nn

from driftseg.adapters.diga import MixedBatchNorm2d, diga_probabilities, mixed_bn_copy
from driftseg.adapters.pipeline import Pipeline, to_input_size
from driftseg.adapters.spec import parse_method
from driftseg.models.registry import classifier_features


class _ReleasedBN(nn.Module):
    """SIFABatchNorm2d.forward in eval mode (batch of 1): lambda_ * running + (1 - lambda_) * current."""

    def __init__(self, bn: nn.BatchNorm2d, lam: float):
        super().__init__()
        self.bn, self.lam = bn, lam

    def forward(self, x):
        mean_cur, var_cur = x.mean([0, 2, 3]), x.var([0, 2, 3], unbiased=False)
        mean = self.lam * self.bn.running_mean + (1 - self.lam) * mean_cur
        var = self.lam * self.bn.running_var + (1 - self.lam) * var_cur
        x = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.bn.eps)
        return x * self.bn.weight[None, :, None, None] + self.bn.bias[None, :, None, None]


def _released_net(net: nn.Sequential, lam: float) -> nn.Sequential:
    ref = copy.deepcopy(net)
    for i, m in enumerate(ref):
        if isinstance(m, nn.BatchNorm2d):
            ref[i] = _ReleasedBN(m, lam)
    return ref


@pytest.mark.parametrize("lam", [0.8, 0.3, 0.9])  # 0.8 DIGA, 0.9 norm_alpha
def test_mixed_bn_is_the_released_linear_mix_frame_by_frame(lam) -> None:
    net = bn_net()
    frames = torch.rand(3, 3, 6, 7, generator=torch.Generator().manual_seed(2)) * torch.tensor([1.0, 2.0, 0.5])[:, None, None, None]
    with torch.no_grad():
        got = mixed_bn_copy(net, lam)(frames)  # three streams in one batch
        expected = torch.cat([_released_net(net, lam)(f[None]) for f in frames])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_mixed_bn_variance_is_linear_not_the_mixture_variance() -> None:
    bn = nn.BatchNorm2d(1).eval()
    bn.running_mean.fill_(2.0)
    bn.running_var.fill_(1.0)
    x = torch.tensor([[[[-1.0, 1.0]]]])  # frame mean 0, variance 1: linear mix 1, mixture 1 + 0.8*0.2*4
    with torch.no_grad():
        y = MixedBatchNorm2d(bn, 0.8)(x)
    mean, var = 0.8 * 2.0, 1.0
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(torch.tensor(var + bn.eps)))


def test_mixed_bn_ends_are_the_frozen_model_and_prediction_time_bn() -> None:
    net = bn_net(3)
    frame = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(mixed_bn_copy(net, 1.0)(frame), net(frame), atol=1e-5, rtol=1e-5)
        ptbn = copy.deepcopy(net)
        for m in ptbn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.track_running_stats = False
                m.running_mean = m.running_var = None
        torch.testing.assert_close(mixed_bn_copy(net, 0.0)(frame), ptbn(frame), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ semantic module


def _cal_proto(feature, y, c):
    """Released cal_proto: per class the mean feature over its pixels, and a flag."""
    proto, flag = torch.zeros(c, feature.shape[1], dtype=feature.dtype), torch.zeros(c, dtype=feature.dtype)
    for i in range(c):
        masks = (y == i).flatten()
        if masks.sum() == 0:
            continue
        flag[i] = 1
        proto[i] = feature.permute((1, 0, 2, 3)).flatten(1).permute((1, 0))[masks].mean(0)
    return proto, flag


def _cal_pred_of_proto(feature, proto, flag, tau):
    """Released cal_pred_of_proto: exp(-||f - q|| / tau) over the flagged classes, normalised."""
    dist = torch.norm(proto[None, :, :, None, None] - feature[:, None], dim=2)
    weight = torch.exp(-dist / tau) * flag[None, :, None, None]
    return weight / weight.sum(1, keepdim=True)


def _released_stream(features, logits, conf=0.9, rho=0.1, tau=1.0, hist_w=0.8, fuse=0.8):
    """The released multi_proto_label and fusion over a stream of frames, pseudo-labels in place of y."""
    c = logits.shape[1]
    hist = flag_hist = None
    outs = []
    for feature, logit in zip(features, logits):
        feature, logit = feature[None], logit[None]
        p = logit.softmax(1)
        label = p.argmax(1)
        label[p.max(1)[0] < conf] = 255
        proto, flag = _cal_proto(feature, label, c)
        if hist is None:
            hist, flag_hist = proto, flag
        else:  # _update_classifier_proto(feature, pseudo-labels, ...)
            hist, flag_hist = hist.clone(), flag_hist.clone()
            for i in range(c):
                if not flag[i]:
                    continue
                if flag_hist[i] == 0:
                    hist[i], flag_hist[i] = proto[i], 1
                else:
                    hist[i] = (1 - rho) * hist[i] + rho * proto[i]
        instance_pred = _cal_pred_of_proto(feature, proto, flag, tau)
        mean_pred = _cal_pred_of_proto(feature, hist, flag_hist, tau)
        outs.append(fuse * (hist_w * mean_pred + (1 - hist_w) * instance_pred) + (1 - fuse) * p)
    return torch.cat(outs), hist, flag_hist.bool()


def _stream(n, seed, scale=0.3):
    """n frames of features and logits; class 4 never confident, so some classes stay unseen."""
    g = torch.Generator().manual_seed(seed)
    features = scale * torch.randn(n, 6, 4, 5, generator=g, dtype=torch.float64)
    logits = 4 * torch.randn(n, 5, 4, 5, generator=g, dtype=torch.float64)
    logits[:, 4] -= 20
    return features, logits


def _ours(features, logits, **kw):
    b, c = 1, logits.shape[1]
    hist, present = torch.zeros(b, c, features.shape[1], dtype=features.dtype), torch.zeros(b, c, dtype=torch.bool)
    outs = []
    for f, x in zip(features, logits):
        args = {"conf": 0.9, "rho": 0.1, "tau": 1.0, "hist_weight": 0.8, "fuse": 0.8, **kw}
        out, hist, present = diga_probabilities(f[None], x[None], hist, present, **args)
        outs.append(out)
    return torch.cat(outs), hist[0], present[0]


def test_semantic_module_equals_the_released_computation_with_pseudo_labels() -> None:
    features, logits = _stream(4, seed=0)
    expected, hist, present = _released_stream(features, logits)
    assert 0 < present.sum() < 5  # some classes seen, not all: both rules of the update ran
    got, got_hist, got_present = _ours(features, logits)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_hist, hist)
    assert torch.equal(got_present, present)


def test_other_parameters_equal_the_released_computation() -> None:
    features, logits = _stream(3, seed=1)
    expected, _, _ = _released_stream(features, logits, conf=0.6, rho=0.3, tau=0.5, hist_w=0.6, fuse=0.7)
    got, _, _ = _ours(features, logits, conf=0.6, rho=0.3, tau=0.5, hist_weight=0.6, fuse=0.7)
    torch.testing.assert_close(got, expected)


def test_far_features_stay_finite_where_the_released_exp_underflows() -> None:
    features, logits = _stream(2, seed=2, scale=100.0)
    features, logits = features.float(), logits.float()
    released, _, _ = _released_stream(features, logits)
    assert torch.isnan(released).any()  # exp(-d) = 0 for every class: 0 / 0
    got, _, _ = _ours(features, logits)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.sum(1), torch.ones_like(got[:, 0]))


def test_no_confident_pixel_gives_the_network_softmax() -> None:
    features, logits = _stream(1, seed=3)
    logits = 0.01 * logits  # every pixel near uniform
    got, _, present = _ours(features, logits)
    assert not present.any()
    torch.testing.assert_close(got, logits.softmax(1))


def test_pipeline_prototypes_come_from_the_mixed_network_features(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("mixbn(lam=0.8)+proto(conf=0.3)"))
    frame = domain_frames(1, seed=5, shift=0.3)
    _, (state,) = pipeline.step(frame, [pipeline.new_state()])
    with torch.no_grad():
        _, coarse, features = classifier_features(mixed_bn_copy(tiny_ckpt.build_model(), 0.8),
                                                  to_input_size(frame, pipeline.input_size))
    _, hist, present = _released_stream(features.double(), coarse.double(), conf=0.3)
    assert present.any()
    assert torch.equal(state.parts["proto"].present, present)
    torch.testing.assert_close(state.parts["proto"].prototypes.double(), hist, atol=1e-4, rtol=1e-4)
