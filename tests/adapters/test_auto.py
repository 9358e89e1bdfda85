"""adapters/auto.py: the shift score, the momentum schedule, frame moments, calibration and state."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.auto import (
    AlphaCurve,
    AutoState,
    ShiftAlpha,
    ShiftCalibration,
    calibrate,
    frame_moments,
    layer_divergence,
    momentum_schedule,
)
from driftseg.adapters.ema_bn import AdaptedNet


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 2, 1))
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, 8, 10))
    return net.eval()


def test_layer_divergence_against_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(1)
    sizes = [3, 2]
    mu, mu_ref, mu_s = torch.randn(2, 5, generator=g), torch.randn(5, generator=g), torch.randn(5, generator=g)
    var, var_ref, var_s = (torch.rand(2, 5, generator=g) + 0.5, torch.rand(5, generator=g) + 0.5,
                           torch.rand(5, generator=g) + 0.5)
    moments = lambda m, v: torch.stack([m, v + m.square()], -2)  # noqa: E731
    got = layer_divergence(moments(mu, var), moments(mu_ref, var_ref), moments(mu_s, var_s), sizes)
    expected = torch.zeros(2, 2)
    for b in range(2):
        for layer, channels in enumerate([range(0, 3), range(3, 5)]):
            terms = []
            for c in channels:
                vs, f = var_s[c].item() + 1e-5, 0.01 * (var_s[c].item() + 1e-5)
                terms.append((mu[b, c].item() - mu_ref[c].item()) ** 2 / vs
                             + (math.log(var[b, c].item() + f) - math.log(var_ref[c].item() + f)) ** 2)
            expected[b, layer] = sum(terms) / len(terms)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    ref = moments(mu_ref, var_ref)
    assert torch.all(layer_divergence(ref[None], ref, moments(mu_s, var_s), sizes) == 0)


@pytest.mark.parametrize("floor, far, low", [(0.8, 0.0, 0.0), (0.8, 8.0, 0.5), (0.6, 3.0, 0.0), (0.5, 2.0, 0.5)])
def test_alpha_curve_is_the_piecewise_line_through_its_knees(floor: float, far: float, low: float) -> None:
    shift = torch.linspace(0, 40, 801)
    # the line through (1, 1), (2 - floor, floor) and, with far, (far, floor), (2 far, low); flat outside
    knees_s, knees_a = [0.0, 1.0, 2 - floor], [1.0, 1.0, floor]
    if far:
        knees_s, knees_a = knees_s + [far, 2 * far], knees_a + [floor, low]
    expected = np.interp(shift.numpy(), knees_s + [41.0], knees_a + [knees_a[-1]])
    torch.testing.assert_close(AlphaCurve(floor, far, low)(shift), torch.from_numpy(expected).float(),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("reach", [0.0, 5.0, 9.0, 12.0, 30.0])
def test_a_streams_reach_lowers_the_floor_of_every_layer(reach: float) -> None:
    # alpha = clip(max(2 - s, floor(max(s, reach))), 1): the floor at the farther of the layer's shift and
    # the stream's reach; the falling part of the line through (far, floor) and (2 far, low)
    floor, far, low = 0.8, 8.0, 0.5
    shift = torch.linspace(0, 40, 801)
    floor_at = lambda x: np.interp(x, [far, 2 * far], [floor, low])  # noqa: E731
    expected = np.minimum(np.maximum(2 - shift.numpy(), floor_at(np.maximum(shift.numpy(), reach))), 1.0)
    got = AlphaCurve(floor, far, low)(shift, torch.tensor(reach))
    torch.testing.assert_close(got, torch.from_numpy(expected).float(), rtol=0, atol=1e-6)


def test_momentum_schedule_averages_then_floors() -> None:
    m = momentum_schedule(torch.arange(12), 0.1)
    expected = torch.tensor([1 / (n + 1) for n in range(12)]).clamp_min(0.1)
    torch.testing.assert_close(m, expected)


def test_frame_moments_recovers_the_frame_statistics() -> None:
    # with alpha = 1 every layer normalises with the source, so a layer's input does not depend on
    # the state: the state after a step with m = 1 is exactly the frame's own moments
    adapted = AdaptedNet(_net()).eval()
    x = torch.rand(2, 3, 8, 10)
    old = adapted.source_state()[None].repeat(2, 1, 1) * 1.3
    ones = torch.ones(2)
    _, own = adapted(x, old, ones, ones)
    m = torch.tensor([0.3, 0.05])
    _, new = adapted(x, old, m, ones)
    torch.testing.assert_close(frame_moments(old, new, m), own, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("floor, far, low, reach", [(0.0, 0.0, 0.0, None), (0.5, 0.0, 0.0, None),
                                                     (0.7, 2.0, 0.1, (0.0, 3.0))])
def test_each_layer_decides_its_alpha_from_the_state_the_frame_updates(floor, far, low, reach) -> None:
    # layer by layer by hand: the frame's moments enter the state, the updated state's divergence from the
    # source in units of tau gives alpha = clip(2 - s / tau, floor, 1) (with far, the floor falls with the
    # larger of s / tau and the stream's reach), and the layer normalises with the alpha-mixture of the
    # source and that state
    net = _net().requires_grad_(False)
    adapted = AdaptedNet(net).eval()
    g = torch.Generator().manual_seed(3)
    x = 1.5 * torch.rand(2, 3, 8, 10, generator=g) - 0.3
    old = adapted.source_state()[None].repeat(2, 1, 1)
    old[1] *= 1.4
    m, tau = torch.tensor([1.0, 0.4]), torch.tensor([4.0, 0.02])  # alphas between the floor and 1 among them
    rule = ShiftAlpha.of(adapted, tau, AlphaCurve(floor, far, low))
    if reach is not None:
        rule = replace(rule, reach=torch.tensor(reach))
    logits, new = adapted(x, old, m, rule)
    h, offset = x, 0
    for layer, (conv, bn) in enumerate([(net[0], net[1]), (net[3], net[4])]):
        h = conv(h)
        c = bn.num_features
        frame = torch.stack([h.mean((2, 3)), h.square().mean((2, 3))], 1)
        state = (1 - m[:, None, None]) * old[:, :, offset:offset + c] + m[:, None, None] * frame
        torch.testing.assert_close(new[:, :, offset:offset + c], state, rtol=1e-4, atol=1e-5)
        mu_t, var_t = state[:, 0], state[:, 1] - state[:, 0].square()
        mu_s, var_s = bn.running_mean, bn.running_var
        f = 0.01 * (var_s + 1e-5)
        s = ((mu_t - mu_s).square() / (var_s + 1e-5) + (torch.log(var_t + f) - torch.log(var_s + f)).square()).mean(1)
        a = (2 - s / tau[layer]).clamp(floor, 1)
        if far:
            farthest = torch.maximum(s / tau[layer], torch.tensor(reach or (0.0, 0.0)))
            fallen = torch.from_numpy(np.interp(farthest.numpy(), [far, 2 * far], [floor, low])).float()
            a = torch.maximum(2 - s / tau[layer], fallen).clamp_max(1)
        a = a[:, None]
        mean = a * mu_s + (1 - a) * mu_t
        var = a * var_s + (1 - a) * var_t + a * (1 - a) * (mu_s - mu_t).square()
        h = torch.stack([F.batch_norm(h[b:b + 1], mean[b], var[b], bn.weight, bn.bias, False, 0.0, bn.eps)
                         for b in range(2)])[:, 0].relu()
        offset += c
    torch.testing.assert_close(logits, net[6](h), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not with lag"):  # a lagged layer is normalised before its input exists
        lagged = AdaptedNet(net, lag=True)
        lagged(x, old, m, ShiftAlpha.of(lagged, tau, AlphaCurve(floor)))


def test_calibration_shapes_and_in_domain_bound() -> None:
    adapted = AdaptedNet(_net()).eval()
    g = torch.Generator().manual_seed(2)
    frames = [torch.rand(1, 3, 8, 10, generator=g) for _ in range(12)]
    cal = calibrate(adapted, frames, 0.1, "x")
    assert cal.tau.shape == cal.kappa.shape == (2,)
    assert torch.all(cal.tau > 0) and torch.all(cal.kappa > 0)
    assert cal.frames == 12 and cal.split == "x"
    restored = ShiftCalibration.from_dict(cal.to_dict(), layers=2)
    torch.testing.assert_close(restored.tau, cal.tau)
    with pytest.raises(ValueError, match="at least 3 frames"):
        calibrate(adapted, frames[:2], 0.1, "x")


@pytest.mark.parametrize("bad", [{"tau": [1.0]}, {"kappa": [1.0, -1.0]}, {"tau": [1.0, float("nan")]}, {"momentum": "x"}])
def test_calibration_refuses_malformed(bad) -> None:
    good = {"tau": [1.0, 2.0], "kappa": [1.0, 2.0], "momentum": 0.1, "split": "s", "frames": 3}
    with pytest.raises(ValueError):
        ShiftCalibration.from_dict({**good, **bad}, layers=2)


def test_auto_state_round_trip_reset_and_refusal() -> None:
    state = AutoState(alpha=torch.tensor([0.5, 1.0]), since_reset=7, score=1.5, reach=9.0, switch_score=0.3,
                      switch_level=0.4, switches=[4])
    copy = AutoState.initial(2)
    copy.load_state_dict(state.state_dict())
    assert copy.state_dict()["switches"] == [4] and copy.since_reset == 7 and copy.score == 1.5 and copy.reach == 9.0
    saved_before_reach = {k: v for k, v in state.state_dict().items() if k != "reach"}
    copy.load_state_dict(saved_before_reach)
    assert copy.reach == 0.0
    torch.testing.assert_close(copy.alpha, state.alpha)
    for bad in ({"alpha": torch.ones(3)}, {"alpha": torch.tensor([2.0, 0.0])}, {"since_reset": -1},
                {"score": float("inf")}, {"reach": -1.0}, {"switches": ["a"]}):
        target = AutoState.initial(2)
        with pytest.raises(ValueError):
            target.load_state_dict({**state.state_dict(), **bad})
        assert target.since_reset == 0 and torch.all(target.alpha == 1)
    state.reset()
    assert state.since_reset == 0 and state.switches == [] and state.reach == 0 and torch.all(state.alpha == 1)


def test_calibration_of_the_first_layers_is_a_prefix() -> None:
    d = {"tau": [1.0, 2.0, 3.0], "kappa": [4.0, 5.0, 6.0], "momentum": 0.1, "split": "s", "frames": 3}
    cal = ShiftCalibration.from_dict(d, layers=2)
    assert cal.tau.tolist() == [1.0, 2.0] and cal.kappa.tolist() == [4.0, 5.0]
