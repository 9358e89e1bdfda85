"""DUA (adapters/dua.py) against the official procedure written out with torch's own BatchNorm2d: BN
layers in train mode with the scheduled momentum on the batch of copies, then eval mode on the frame."""
import copy

import pytest
import torch
from pipeline_util import bn_net
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.dua import DUANet, augmented_copies, crop_thetas, dua_momentum


def _official_step(net: nn.Module, frame: torch.Tensor, copies: torch.Tensor, momentum: float) -> torch.Tensor:
    """One frame of the official dua(): BN train mode at `momentum` on the copies, then eval on the frame
    (in place on `net`)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.momentum = momentum
    net(copies)
    net.eval()
    return net(frame)


def _stats(net: nn.Module) -> torch.Tensor:
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    return torch.stack([torch.cat([m.running_mean for m in norms]), torch.cat([m.running_var for m in norms])])


def test_momentum_schedule_is_the_official_one() -> None:
    mom_pre, expected = 0.1, []
    for _ in range(6):
        mom_new = mom_pre * 0.94
        expected.append(mom_new + 0.005)
        mom_pre = mom_new
    assert [dua_momentum(k) for k in range(1, 7)] == pytest.approx(expected, rel=1e-12)


def test_two_streams_equal_the_official_steps_run_apart() -> None:
    net = bn_net()
    dua = DUANet(net)
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(2, 3, 6, 7, generator=g) * torch.tensor([1.0, 0.4])[:, None, None, None]
    refs = [copy.deepcopy(net), copy.deepcopy(net)]
    stats = torch.stack([_stats(net), _stats(net)])
    with torch.no_grad():
        for k in (1, 2, 3):
            copies = torch.rand(2 * 4, 3, 6, 7, generator=g) * frames.repeat_interleave(4, 0)
            momentum = torch.tensor([dua_momentum(k), dua_momentum(k + 2)])  # the streams at other frames
            logits, stats = dua(frames, copies, stats, momentum, {})
            for b, ref in enumerate(refs):
                expected = _official_step(ref, frames[b:b + 1], copies[4 * b:4 * b + 4], float(momentum[b]))
                torch.testing.assert_close(logits[b:b + 1], expected, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(stats[b], _stats(ref), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(stats[0], stats[1])


def test_pooled_statistics_are_the_mean_of_variances_plus_the_variance_of_means() -> None:
    bn = nn.BatchNorm2d(1).eval()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    dua = DUANet(nn.Sequential(bn))
    copies = torch.tensor([[[[0.0, 2.0]]], [[[4.0, 6.0]]]])  # means 1 and 5, variances 1 and 1
    _, stats = dua(copies[:1], copies, torch.tensor([[[0.0], [1.0]]]), torch.ones(1), {})  # momentum 1
    pooled_var = 1.0 + 4.0  # mean of the variances + variance of the means, biased
    torch.testing.assert_close(stats[0, :, 0], torch.tensor([3.0, pooled_var * 4 / 3]))


def test_crop_thetas_are_seeded_crops_inside_the_frame() -> None:
    a, b = crop_thetas(64, seed=5), crop_thetas(64, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, crop_thetas(64, seed=6))
    scale, shift = a[:, 1, 1], a[:, :, 2]
    assert ((scale >= 0.5) & (scale <= 1)).all()
    assert torch.equal(a[:, 0, 0].abs(), scale) and 10 < (a[:, 0, 0] < 0).sum() < 54  # about half flipped
    assert (shift.abs() <= (1 - scale)[:, None] + 1e-6).all()  # never outside the frame
    assert (a[:, 0, 1] == 0).all() and (a[:, 1, 0] == 0).all()


def test_augmented_copies_identity_flip_and_crop() -> None:
    g = torch.Generator().manual_seed(7)
    images = torch.rand(2, 3, 8, 12, generator=g)
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    flip = torch.tensor([[-1.0, 0, 0], [0, 1, 0]])
    top_left = torch.tensor([[0.5, 0, -0.5], [0, 0.5, -0.5]])  # the top-left quarter, resized 2x
    copies = augmented_copies(images, torch.stack([identity, flip, top_left])[None].expand(2, 3, 2, 3))
    assert copies.shape == (6, 3, 8, 12)
    torch.testing.assert_close(copies[0::3], images)
    torch.testing.assert_close(copies[1::3], images.flip(-1))
    resized = F.interpolate(images[..., :4, :6], size=(8, 12), mode="bilinear", align_corners=False)
    # the same away from the crop's far edges, where the crop samples the pixels beyond it
    torch.testing.assert_close(copies[2::3][..., :-1, :-1], resized[..., :-1, :-1])
