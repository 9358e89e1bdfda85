"""AdaptedNet (EMA AdaBN with alpha-blended source statistics) against independent computations."""
import copy

import pytest
import torch
from torch import nn

from driftseg.adapters.ema_bn import AdaptedNet, FoldedStreamBatchNorm2d, StreamBatchNorm2d


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial source statistics and affine parameters in every BatchNorm2d."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(c, generator=g))
                m.running_var.copy_(0.3 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.3 * torch.randn(c, generator=g))


def _tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv2d(5, 2, 1),
    )
    _randomise_bn(net, seed + 1)
    return net.eval()


def _single_bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    _randomise_bn(net, seed + 1)
    return net.eval()


def _images(b: int, seed: int, h: int = 6, w: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) + 0.2 * torch.randn(b, 3, 1, 1, generator=g)


def _random_state(b: int, n: int, seed: int) -> torch.Tensor:
    """A valid state: second moment >= mean^2."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(b, n, generator=g)
    sq = mean.square() + 0.2 + torch.rand(b, n, generator=g)
    return torch.stack([mean, sq], dim=1)


def _ptbn_reference(model: nn.Module) -> nn.Module:
    """Prediction-time BN the ordinary way: BN in train mode without running statistics."""
    ref = copy.deepcopy(model).eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.track_running_stats = False
            m.running_mean = m.running_var = None
    return ref


def _bn_inputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The input of every BatchNorm2d of `model` (in module order) on `images`, by forward hooks."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _full(b: int, value: float) -> torch.Tensor:
    return torch.full((b,), value)


# ---------------------------------------------------------------------------------------- frozen


@pytest.mark.parametrize("momentum", [0.0, 0.3, 1.0])
def test_alpha_one_is_the_frozen_model(momentum: float) -> None:
    model = _tiny_net()
    net = AdaptedNet(model)
    images = _images(2, seed=1)
    state = _random_state(2, net.state_size, seed=2)
    logits, _ = net(images, state, _full(2, momentum), _full(2, 1.0))
    with torch.no_grad():
        expected = model(images)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_adapted_net_leaves_the_model_alone() -> None:
    model = _tiny_net()
    before = copy.deepcopy(model.state_dict())
    net = AdaptedNet(model)
    net(_images(1, seed=1), net.source_state()[None], _full(1, 1.0), _full(1, 0.0))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2
    assert not any(isinstance(m, StreamBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------------------------- ptbn (m=1, a=0)


def test_momentum_one_alpha_zero_is_prediction_time_bn() -> None:
    model = _tiny_net()
    net = AdaptedNet(model)
    ref = _ptbn_reference(model)
    images = _images(3, seed=3)
    state = _random_state(3, net.state_size, seed=4)  # must be ignored entirely at m = 1
    logits, new_state = net(images, state, _full(3, 1.0), _full(3, 0.0))
    with torch.no_grad():
        expected = torch.cat([ref(images[i : i + 1]) for i in range(3)])
    # a batched reference would pool the statistics over the batch: make sure that differs
    with torch.no_grad():
        pooled = ref(images)
    assert not torch.allclose(pooled, expected, atol=1e-3)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)

    # and the new state is exactly each frame's own BN-input statistics under prediction-time BN
    for i in range(3):
        inputs = _bn_inputs(ref, images[i : i + 1])
        mean = torch.cat([x.mean((0, 2, 3)) for x in inputs])
        sq = torch.cat([x.square().mean((0, 2, 3)) for x in inputs])
        torch.testing.assert_close(new_state[i, 0], mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(new_state[i, 1], sq, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ state update


@pytest.mark.parametrize("momentum, alpha", [(0.0, 0.0), (0.1, 0.0), (0.37, 0.6), (1.0, 1.0)])
def test_state_update_is_an_ema_of_the_bn_input_moments(momentum: float, alpha: float) -> None:
    model = _single_bn_net()
    net = AdaptedNet(model)
    images = _images(2, seed=5)
    old = _random_state(2, net.state_size, seed=6)
    _, new_state = net(images, old, _full(2, momentum), _full(2, alpha))

    # the BN input does not depend on the BN itself: hook a plain copy of the frozen model
    (x,) = _bn_inputs(copy.deepcopy(model), images)
    mean = x.double().mean((2, 3))
    sq = x.double().square().mean((2, 3))
    old = old.double()
    torch.testing.assert_close(new_state[:, 0].double(), (1 - momentum) * old[:, 0] + momentum * mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_state[:, 1].double(), (1 - momentum) * old[:, 1] + momentum * sq, atol=1e-5, rtol=1e-5)


def test_new_state_shape_and_dtype() -> None:
    net = AdaptedNet(_tiny_net())
    assert net.state_size == 4 + 5
    logits, new_state = net(_images(2, seed=0), _random_state(2, 9, seed=0), _full(2, 0.5), _full(2, 0.5))
    assert logits.shape == (2, 2, 6, 7)
    assert new_state.shape == (2, 2, 9)
    assert new_state.dtype == torch.float32


# --------------------------------------------------------------------------------- mixture formula


def _hand_bn(x, state, m, a, mu_s, var_s, weight, bias, eps):
    """One BN layer's output, in float64, from the raw moments of the alpha-mixture of domains."""
    x, state = x.double(), state.double()
    mu_s, var_s, weight, bias = (t.double() for t in (mu_s, var_s, weight, bias))
    mu_t = (1 - m) * state[0] + m * x.mean((1, 2))
    sq_t = (1 - m) * state[1] + m * x.square().mean((1, 2))
    # mixture of two distributions: first and second raw moments mix linearly
    mean = a * mu_s + (1 - a) * mu_t
    second = a * (var_s + mu_s.square()) + (1 - a) * sq_t
    var = second - mean.square()
    # the closed form stated in the module docstring, must agree with the moment computation
    var_t = sq_t - mu_t.square()
    closed = a * var_s + (1 - a) * var_t + a * (1 - a) * (mu_s - mu_t).square()
    torch.testing.assert_close(var, closed)
    y = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)
    return y * weight[:, None, None] + bias[:, None, None]


# (0.05, 0.0) is `rbn`; every alpha > 0 checks the TTN-style exact mixture variance (_hand_bn's closed form)
@pytest.mark.parametrize("momentum, alpha", [(0.2, 0.3), (0.7, 0.5), (1.0, 0.9), (0.0, 0.25), (0.05, 0.0)])
def test_mixture_of_source_and_target_moments(momentum: float, alpha: float) -> None:
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(bn)
    _randomise_bn(model, seed=7)
    model.eval()
    net = AdaptedNet(model)
    g = torch.Generator().manual_seed(8)
    images = 1.5 * torch.randn(2, 4, 5, 5, generator=g) + torch.randn(2, 4, 1, 1, generator=g)
    state = _random_state(2, 4, seed=9)
    out, _ = net(images, state, _full(2, momentum), _full(2, alpha))
    for i in range(2):
        expected = _hand_bn(images[i], state[i], momentum, alpha, bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(), bn.eps)
        torch.testing.assert_close(out[i].double(), expected, atol=1e-5, rtol=1e-5)


def test_update_then_normalise() -> None:
    """The first layer normalises a frame with the state already updated with that frame."""
    model = _tiny_net()
    net = AdaptedNet(model)
    first = net.norms[0]
    seen = {}
    hook = first.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0].detach(), y=out.detach()))
    images = _images(1, seed=10)
    state = _random_state(1, net.state_size, seed=11)
    m, a = 0.5, 0.0
    try:
        net(images, state, _full(1, m), _full(1, a))
    finally:
        hook.remove()
    bn = model[1]
    args = (bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(), bn.eps)
    x = seen["x"][0]
    updated = _hand_bn(x, state[0, :, :4], m, a, *args)
    stale = _hand_bn(x, state[0, :, :4], 0.0, a, *args)  # normalising with the old state
    assert not torch.allclose(updated, stale, atol=1e-3)
    torch.testing.assert_close(seen["y"][0].double(), updated, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ per-sample streams


def test_batch_of_streams_equals_separate_calls() -> None:
    net = AdaptedNet(_tiny_net())
    images = _images(3, seed=12)
    state = _random_state(3, net.state_size, seed=13)
    momentum = torch.tensor([0.05, 0.5, 1.0])
    alpha = torch.tensor([0.0, 0.4, 0.9])
    logits, new_state = net(images, state, momentum, alpha)
    for i in range(3):
        li, si = net(images[i : i + 1], state[i : i + 1], momentum[i : i + 1], alpha[i : i + 1])
        torch.testing.assert_close(logits[i : i + 1], li, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(new_state[i : i + 1], si, atol=1e-5, rtol=1e-5)


def test_input_tensors_not_modified_in_place() -> None:
    net = AdaptedNet(_tiny_net())
    images = _images(2, seed=14)
    state = _random_state(2, net.state_size, seed=15)
    momentum, alpha = torch.tensor([0.3, 1.0]), torch.tensor([0.5, 0.0])
    copies = [t.clone() for t in (images, state, momentum, alpha)]
    _, new_state = net(images, state, momentum, alpha)
    for original, kept in zip((images, state, momentum, alpha), copies):
        assert torch.equal(original, kept)
    assert not torch.equal(new_state, state)
    assert new_state.data_ptr() != state.data_ptr()


# ---------------------------------------------------------------------------------- source state


def test_source_state_is_running_mean_and_second_moment() -> None:
    model = _tiny_net()
    net = AdaptedNet(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    expected = torch.stack(
        [
            torch.cat([b.running_mean for b in bns]),
            torch.cat([b.running_var + b.running_mean**2 for b in bns]),
        ]
    )
    assert net.source_state().shape == (2, net.state_size)
    torch.testing.assert_close(net.source_state(), expected)


def test_source_state_from_train_mode_statistics() -> None:
    """Running statistics accumulated the usual way (train-mode batches) are picked up too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.5), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model.train()
    with torch.no_grad():
        for seed in range(4):
            model(_images(2, seed=seed) * 3 + 1)
    model.eval()
    bn = model[1]
    assert not torch.allclose(bn.running_mean, torch.zeros(4))
    net = AdaptedNet(model)
    torch.testing.assert_close(net.source_state()[0], bn.running_mean)
    torch.testing.assert_close(net.source_state()[1], bn.running_var + bn.running_mean.square())
    images = _images(1, seed=20)
    logits, _ = net(images, net.source_state()[None], _full(1, 0.1), _full(1, 1.0))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images), atol=1e-5, rtol=1e-5)


def test_repeated_frame_converges_to_its_statistics() -> None:
    model = _tiny_net()
    net = AdaptedNet(model)
    images = _images(1, seed=16)
    m, a = _full(1, 0.5), _full(1, 0.0)
    # the fixed point of feeding one frame forever is that frame's own (prediction-time BN) statistics
    ptbn_logits, target = net(images, net.source_state()[None], _full(1, 1.0), a)
    state = net.source_state()[None]
    first_gap = (state[0, :, :4] - target[0, :, :4]).abs()
    assert first_gap.max() > 0.05  # the frame is far enough from the source to see convergence
    gaps = []
    for step in range(1, 41):
        logits, state = net(images, state, m, a)
        # the first layer's input does not depend on the state: its gap halves exactly every frame
        if step <= 5:
            torch.testing.assert_close(
                (state[0, :, :4] - target[0, :, :4]).abs(), first_gap * 0.5**step, atol=1e-5, rtol=1e-4
            )
        gaps.append((state - target).abs().max().item())
    assert gaps[-1] < 1e-4
    assert gaps[-1] < gaps[0] < (net.source_state()[None] - target).abs().max().item()
    torch.testing.assert_close(logits, ptbn_logits, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------- errors


def test_wrong_state_shape_raises_with_expected_shape() -> None:
    net = AdaptedNet(_tiny_net())
    images = _images(2, seed=0)
    m = a = _full(2, 0.5)
    for bad in (torch.zeros(2, 2, 8), torch.zeros(1, 2, 9), torch.zeros(2, 9), torch.zeros(2, 3, 9)):
        with pytest.raises(ValueError, match=r"\[2, 2, 9\]"):
            net(images, bad, m, a)


def test_wrong_momentum_or_alpha_shape_raises() -> None:
    net = AdaptedNet(_tiny_net())
    images = _images(2, seed=0)
    state = _random_state(2, 9, seed=0)
    good = _full(2, 0.5)
    for bad in (torch.tensor(0.5), _full(1, 0.5), _full(3, 0.5), torch.full((2, 1), 0.5)):
        with pytest.raises(ValueError, match=r"\[2\]"):
            net(images, state, bad, good)
        with pytest.raises(ValueError, match=r"\[2\]"):
            net(images, state, good, bad)


def test_model_without_batchnorm_raises() -> None:
    with pytest.raises(ValueError, match="BatchNorm2d"):
        AdaptedNet(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)))
    with pytest.raises(ValueError, match="BatchNorm2d"):
        AdaptedNet(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4)))


def test_stream_norm_outside_adapted_net_raises() -> None:
    net = AdaptedNet(_tiny_net())
    with pytest.raises(RuntimeError):
        net.model(_images(1, seed=0))
    # no per-call inputs are kept after a call, whether it succeeded or failed inside the model
    net(_images(1, seed=0), net.source_state()[None], _full(1, 0.5), _full(1, 0.5))
    assert all(n._inputs is None and n._outputs is None for n in net.norms)
    with pytest.raises(RuntimeError, match="AdaptedNet"):
        net.model(_images(1, seed=0))
    with pytest.raises(RuntimeError):  # 4 input channels for a 3-channel conv
        net(torch.zeros(1, 4, 6, 7), net.source_state()[None], _full(1, 0.5), _full(1, 0.5))
    assert all(n._inputs is None and n._outputs is None for n in net.norms)
    with pytest.raises(ValueError):
        net(_images(1, seed=0), torch.zeros(1, 2, 3), _full(1, 0.5), _full(1, 0.5))
    assert all(n._inputs is None and n._outputs is None for n in net.norms)


def test_unreached_layer_keeps_its_state() -> None:
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.aux = nn.BatchNorm2d(3)  # never used in forward

        def forward(self, x):
            return self.bn(self.conv(x))

    model = WithAux().eval()
    _randomise_bn(model, seed=3)
    net = AdaptedNet(model)
    assert net.state_size == 7
    state = _random_state(1, 7, seed=17)
    _, new_state = net(_images(1, seed=18), state, _full(1, 0.5), _full(1, 0.0))
    torch.testing.assert_close(new_state[:, :, 4:], state[:, :, 4:])
    assert not torch.allclose(new_state[:, :, :4], state[:, :, :4])


# ------------------------------------------------------------------------------ registered LRASPP


@pytest.mark.parametrize("lag", [False, True])
def test_lraspp_alpha_one_is_frozen(lag: bool) -> None:
    from driftseg.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    _randomise_bn(model, seed=21)
    model.eval()
    net = AdaptedNet(model, lag=lag)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(22))
    state = net.source_state()[None].clone()
    state[:, 0] += 0.3  # a target state far from the source: must not matter at alpha = 1
    state[:, 1] = state[:, 1] * 2 + 0.5
    with torch.no_grad():
        logits, new_state = net(images, state, _full(1, 0.5), _full(1, 1.0))
        expected = model(images)
        ptbn, _ = net(images, state, _full(1, 1.0), _full(1, 0.0))
    assert logits.shape == expected.shape == (1, 3, 64, 64)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ptbn, expected, atol=1e-3)  # the state does reach the network
    assert new_state.shape == state.shape and torch.isfinite(new_state).all()
    if lag:  # at alpha 1 both normalise with the source: the folded layers' frame moments, mapped back, are the same
        _, unlagged_state = AdaptedNet(model)(images, state, _full(1, 0.5), _full(1, 1.0))
        torch.testing.assert_close(new_state, unlagged_state, atol=1e-4, rtol=1e-4)


def test_adapting_the_first_layers_only_folds_the_rest() -> None:
    model = _tiny_net()
    full = AdaptedNet(model)
    first = AdaptedNet(model, layers=1)
    assert len(first.norms) == 1 and first.sizes == [4] and first.state_size == 4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in first.model.modules())  # the second BN is folded
    x = _images(2, seed=3)
    m, a = _full(2, 0.3), _full(2, 0.0)
    # the second layer keeps its source statistics: as in the full net with that layer's alpha at 1
    logits, state = first(x, full.source_state()[:, :4][None].repeat(2, 1, 1), m, a)
    expected, expected_state = full(x, full.source_state()[None].repeat(2, 1, 1), m, torch.tensor([[0.0, 1.0]] * 2))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state, expected_state[:, :, :4])
    # more layers than the model has adapts them all (the recommended `auto` names 12; a small network has fewer)
    assert AdaptedNet(model, layers=3).layer_names == full.layer_names
    with pytest.raises(ValueError, match=r"layers must be >= 1 \(the model has 2 BN layers\)"):
        AdaptedNet(model, layers=0)


# ------------------------------------------------------------------------------------ strided statistics


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_statistics_are_the_moments_of_the_subsample(stride: int) -> None:
    """At m = 1, a = 0 each BN layer normalises with the moments of every stride-th pixel of every
    stride-th row of its input, computed here from the layer inputs of the network run that way."""
    model = _single_bn_net()
    net = AdaptedNet(model, stride=stride)
    images = _images(2, seed=8, h=9, w=11)
    logits, new_state = net(images, _random_state(2, net.state_size, seed=9), _full(2, 1.0), _full(2, 0.0))
    (x,) = _bn_inputs(model, images)  # the conv before the only BN layer: the same input either way
    sub = x[:, :, ::stride, ::stride]
    mean, var = sub.mean((2, 3)), sub.var((2, 3), unbiased=False)
    torch.testing.assert_close(new_state[:, 0], mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_state[:, 1], var + mean.square(), atol=1e-5, rtol=1e-5)
    bn = model[1]
    normalised = (x - mean[..., None, None]) / torch.sqrt(var[..., None, None] + bn.eps)
    expected = model[3](torch.relu(normalised * bn.weight[:, None, None] + bn.bias[:, None, None]))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_stride_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="stride must be >= 1"):
        AdaptedNet(_tiny_net(), stride=0)


# ------------------------------------------------------------------------------------ one-frame lag, folded


def _lagged_reference(model: nn.Module, images: torch.Tensor, state: torch.Tensor, m: float, alpha: torch.Tensor):
    """Each sample through `model` in eval mode with its BN layers' running statistics set to the mixture of
    the source and its old state (alpha [B, layers]), nothing of the frame; the new state the EMA of its BN
    inputs' moments."""
    logits, frames = [], []
    for i in range(images.shape[0]):
        ref = copy.deepcopy(model)
        bns = [mod for mod in ref.modules() if isinstance(mod, nn.BatchNorm2d)]
        start = 0
        for layer, bn in enumerate(bns):
            c, a = bn.num_features, float(alpha[i, layer])
            old_mean, old_sq = state[i, 0, start:start + c], state[i, 1, start:start + c]
            src_sq = bn.running_var + bn.running_mean.square()
            mean = a * bn.running_mean + (1 - a) * old_mean
            var = a * src_sq + (1 - a) * old_sq - mean.square()
            bn.running_mean.copy_(mean), bn.running_var.copy_(var)
            start += c
        x = images[i:i + 1]
        inputs = _bn_inputs(ref, x)
        with torch.no_grad():
            logits.append(ref(x))
        frames.append(torch.cat([torch.stack([t.mean((0, 2, 3)), t.square().mean((0, 2, 3))]) for t in inputs], 1))
    return torch.cat(logits), torch.lerp(state, torch.stack(frames), m)


@pytest.mark.parametrize("net", [_tiny_net, _single_bn_net])
@pytest.mark.parametrize("b", [1, 3])
def test_lag_normalises_with_the_state_before_the_frame_folded_into_the_convolutions(net, b: int) -> None:
    model = net()
    lagged = AdaptedNet(model, lag=True)
    assert all(isinstance(n, FoldedStreamBatchNorm2d) for n in lagged.norms)  # every BN follows a conv here
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in lagged.model.modules())
    images, state = _images(b, seed=11, h=9, w=8), _random_state(b, AdaptedNet(model).state_size, seed=12)
    alpha = torch.rand(b, len(lagged.norms), generator=torch.Generator().manual_seed(13))
    logits, new_state = lagged(images, state, _full(b, 0.4), alpha)
    expected, expected_state = _lagged_reference(model, images, state, 0.4, alpha)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(new_state, expected_state, atol=1e-5, rtol=1e-4)
    # alpha 1 is the frozen model whatever the state; and the model itself is left alone
    frozen, _ = lagged(images, state, _full(b, 0.4), torch.ones(b, len(lagged.norms)))
    with torch.no_grad():
        torch.testing.assert_close(frozen, model(images), atol=1e-5, rtol=1e-4)
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in model.modules()) == len(lagged.norms)


def test_lag_on_a_layer_after_no_convolution_is_not_folded() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1, bias=False),
                          nn.BatchNorm2d(5), nn.Conv2d(5, 2, 1))
    _randomise_bn(model, 1)
    model.eval()
    lagged = AdaptedNet(model, lag=True)
    assert [type(n) for n in lagged.norms] == [StreamBatchNorm2d, FoldedStreamBatchNorm2d]
    images, state = _images(2, seed=3), _random_state(2, lagged.state_size, seed=4)
    alpha = torch.tensor([[0.0, 0.5], [0.8, 0.1]])
    logits, new_state = lagged(images, state, _full(2, 1.0), alpha)
    expected, expected_state = _lagged_reference(model, images, state, 1.0, alpha)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(new_state, expected_state, atol=1e-5, rtol=1e-4)


def test_lag_with_a_channel_scaled_to_zero_keeps_its_source_moments() -> None:
    """Folded (a one-frame batch), a channel whose BN weight is 0 shows nothing of the convolution's output."""
    model = _single_bn_net()
    with torch.no_grad():
        model[1].weight[2] = 0.0
    lagged = AdaptedNet(model, lag=True)
    images, state = _images(1, seed=5), _random_state(1, lagged.state_size, seed=6)
    logits, new_state = lagged(images, state, _full(1, 1.0), _full(1, 0.0))
    expected, expected_state = _lagged_reference(model, images, state, 1.0, torch.zeros(1, 1))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    keep = [0, 1, 3]
    torch.testing.assert_close(new_state[:, :, keep], expected_state[:, :, keep], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(new_state[:, :, 2], lagged.source[:, 2].expand(1, 2))
