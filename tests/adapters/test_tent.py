"""TENT against an independent entropy + Adam computation done with torch.autograd."""
import copy

import pytest
import torch
from torch import nn

from driftseg.adapters.tent import TentStream, configure, softmax_entropy


def _tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 1),
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(4, generator=g))
                m.running_var.copy_(0.5 + torch.rand(4, generator=g))
                m.weight.copy_(0.5 + torch.rand(4, generator=g))
                m.bias.copy_(0.2 * torch.randn(4, generator=g))
    return net.eval()


def _images(b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 6, 6, generator=g)


def _bn_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]


class _ManualTent:
    """Entropy minimisation by hand: batch-statistics BN via F.batch_norm, gradients from
    torch.autograd.grad, and Adam (betas 0.9, 0.999, eps 1e-8, bias-corrected) written out."""

    def __init__(self, model: nn.Module, lr: float):
        self.model = copy.deepcopy(model)
        self.lr = lr
        self.bns = [m for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.params = [p.detach().clone() for bn in self.bns for p in (bn.weight, bn.bias)]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def logits(self, images: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        x = images
        it = iter(params)
        for layer in self.model:
            if isinstance(layer, nn.BatchNorm2d):
                w, b = next(it), next(it)
                mean = x.mean((0, 2, 3), keepdim=True)
                var = (x - mean).square().mean((0, 2, 3), keepdim=True)  # biased, as in training BN
                x = (x - mean) / torch.sqrt(var + layer.eps) * w[None, :, None, None] + b[None, :, None, None]
            else:
                x = layer(x)
        return x

    def step(self, images: torch.Tensor) -> torch.Tensor:
        params = [p.clone().requires_grad_(True) for p in self.params]
        logits = self.logits(images, params)
        p = logits.softmax(1)
        loss = -(p * p.log()).sum(1).mean()
        grads = torch.autograd.grad(loss, params)
        self.t += 1
        new = []
        for i, (param, grad) in enumerate(zip(self.params, grads)):
            self.m[i] = 0.9 * self.m[i] + 0.1 * grad
            self.v[i] = 0.999 * self.v[i] + 0.001 * grad.square()
            m_hat = self.m[i] / (1 - 0.9**self.t)
            v_hat = self.v[i] / (1 - 0.999**self.t)
            new.append(param - self.lr * m_hat / (v_hat.sqrt() + 1e-8))
        self.params = new
        return logits.detach()


def test_softmax_entropy_matches_definition() -> None:
    logits = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0))
    p = logits.double().softmax(1)
    expected = -(p * p.log()).sum(1)
    out = softmax_entropy(logits)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)
    uniform = softmax_entropy(torch.zeros(1, 4, 1, 1))
    torch.testing.assert_close(uniform, torch.full((1, 1, 1), torch.log(torch.tensor(4.0)).item()))


def test_configure_leaves_only_bn_affine_trainable() -> None:
    model = _tiny_net()
    model.append(nn.Dropout(0.0))
    params = configure(model)
    bn_params = _bn_params(model)
    assert [id(p) for p in params] == [id(p) for p in bn_params]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in bn_params}
    assert all(not p.requires_grad for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training and not m.track_running_stats
            assert m.running_mean is None and m.running_var is None
    # BN now normalises by the batch's own statistics, whatever the source statistics were
    x = torch.randn(1, 4, 5, 5)
    bn = model[1]
    expected = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps)
    expected = expected * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    torch.testing.assert_close(bn(x), expected, atol=1e-5, rtol=1e-5)


def test_configure_without_bn_raises() -> None:
    with pytest.raises(ValueError, match="BatchNorm2d"):
        configure(nn.Sequential(nn.Conv2d(3, 2, 1)))


def test_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="steps"):
        TentStream(_tiny_net(), steps=0)


def test_one_step_matches_manual_adam() -> None:
    model = _tiny_net()
    lr = 1e-2
    stream = TentStream(model, lr=lr, steps=1)
    manual = _ManualTent(model, lr=lr)
    images = _images(1, seed=1)
    logits = stream.forward_and_adapt(images)
    expected_logits = manual.step(images)
    # the prediction returned is the one made before this frame's update
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    got = _bn_params(stream.model)
    for a, b in zip(got, manual.params):
        torch.testing.assert_close(a.detach(), b, atol=1e-6, rtol=1e-5)
    # the first Adam step moves every parameter by about lr (sign of the gradient)
    moved = torch.cat([(a.detach() - s.detach()).abs() for a, s in zip(got, _bn_params(model))])
    assert moved.max() <= lr * 1.0001 and moved.max() > 0.5 * lr


def test_several_frames_and_steps_match_manual_adam() -> None:
    model = _tiny_net(seed=3)
    lr = 5e-3
    stream = TentStream(model, lr=lr, steps=2)
    manual = _ManualTent(model, lr=lr)
    for seed in range(3):
        images = _images(2, seed=10 + seed)
        logits = stream.forward_and_adapt(images)
        manual.step(images)
        expected_logits = manual.step(images)  # the last step's forward, before its update
        torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-4)
    for a, b in zip(_bn_params(stream.model), manual.params):
        torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=1e-4)


def test_step_reduces_entropy_on_the_same_frame() -> None:
    stream = TentStream(_tiny_net(seed=5), lr=1e-2, steps=1)
    images = _images(1, seed=6)
    entropies = []
    for _ in range(4):
        logits = stream.forward_and_adapt(images)
        entropies.append(softmax_entropy(logits).mean().item())
    assert all(b < a for a, b in zip(entropies, entropies[1:])), entropies


def test_reset_restores_source_parameters() -> None:
    model = _tiny_net()
    stream = TentStream(model, lr=1e-2)
    images = _images(1, seed=2)
    first = stream.forward_and_adapt(images)
    stream.forward_and_adapt(images)
    assert not torch.equal(stream.model[1].weight, model[1].weight)
    stream.reset()
    for a, b in zip(_bn_params(stream.model), _bn_params(model)):
        assert torch.equal(a.detach(), b.detach())
    assert stream.optimizer.state_dict()["state"] == {}
    # and it adapts from scratch again: the same first prediction and the same first update
    again = stream.forward_and_adapt(images)
    torch.testing.assert_close(again, first)


def test_source_model_is_never_modified() -> None:
    model = _tiny_net()
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    stream = TentStream(model, lr=1e-1, steps=2)
    for seed in range(3):
        stream.forward_and_adapt(_images(1, seed=seed))
    stream.reset()
    stream.forward_and_adapt(_images(1, seed=9))
    assert not model.training
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key


def test_state_dict_round_trip_continues_identically() -> None:
    model = _tiny_net()
    a = TentStream(model, lr=1e-2)
    b = TentStream(model, lr=1e-2)
    a.forward_and_adapt(_images(1, seed=0))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    images = _images(1, seed=1)
    torch.testing.assert_close(a.forward_and_adapt(images), b.forward_and_adapt(images))
    for pa, pb in zip(_bn_params(a.model), _bn_params(b.model)):
        torch.testing.assert_close(pa, pb)


def test_runs_under_no_grad() -> None:
    stream = TentStream(_tiny_net(), lr=1e-2)
    with torch.no_grad():
        logits = stream.forward_and_adapt(_images(1, seed=0))
    assert not logits.requires_grad
    assert not torch.equal(stream.model[1].weight, _tiny_net()[1].weight)


# ------------------------------------------------------------------ known problems, kept visible


def test_prediction_is_deterministic_with_dropout() -> None:
    model = _tiny_net()
    model.insert(6, nn.Dropout(0.5))
    images = _images(1, seed=0)
    torch.manual_seed(0)
    a = TentStream(model, lr=1e-2).forward_and_adapt(images)
    torch.manual_seed(1)
    b = TentStream(model, lr=1e-2).forward_and_adapt(images)
    torch.testing.assert_close(a, b)


@pytest.mark.xfail(strict=True, raises=ValueError, reason="a BN after global pooling (deeplabv3's ASPP "
                   "pooling branch) sees one value per channel for a single frame and train-mode BN raises")
def test_single_frame_with_pooled_bn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1),
    ).eval()
    TentStream(model, lr=1e-2).forward_and_adapt(_images(1, seed=0))


def test_a_frame_not_adapted_on_leaves_the_model_as_it_was(tiny_ckpt) -> None:
    """Pipeline.step(adapt=False) on a backprop method: the prediction of the stream's model as it stands
    (tent's logits come before its step), and no step kept."""
    from synthetic_frames import domain_frames

    from driftseg.adapters.pipeline import Pipeline
    from driftseg.adapters.spec import parse_method

    pipeline = Pipeline(tiny_ckpt, parse_method("tent(lr=0.01)"))
    frames = domain_frames(2, seed=7)
    _, (state,) = pipeline.step(frames[:1], [pipeline.new_state()])
    before = copy.deepcopy(state.parts["tent"].model.state_dict())
    labels, (kept,) = pipeline.step(frames[1:], [state], adapt=False)
    assert kept is state
    for key, value in state.parts["tent"].model.state_dict().items():
        assert torch.equal(value, before[key]), key
    adapted, _ = pipeline.step(frames[1:], [state])
    assert torch.equal(labels, adapted)
