"""The offline jobs' pieces on tiny CPU tensors, against direct computations."""
import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.fda import band_size, low_freq_amplitude, transfer
from driftseg.models.registry import create_model
from driftseg.training import adversarial, norms, pseudo_labels
from driftseg.training.classmix import class_mix
from driftseg.training.finetune import fda_style
from driftseg.training.networks import FeatureTap, MultiLevelNet, OutputDiscriminator


def tiny_model(arch="lraspp_mobilenet_v3_large") -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, 5, (0.5,) * 3, (0.25,) * 3).eval()


def test_discriminator_is_five_4x4_stride_2_convolutions_with_leaky_relu() -> None:
    d = OutputDiscriminator(11)
    convs = [m for m in d if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert [m.negative_slope for m in d if isinstance(m, nn.LeakyReLU)] == [0.2] * 4
    assert d(torch.rand(2, 11, 64, 96)).shape == (2, 1, 2, 3)  # 64 x 96 / 32


@pytest.mark.parametrize("arch, key, channels", [
    ("lraspp_mobilenet_v3_large", "high", 960), ("deeplabv3_mobilenet_v3_large", "out", 960),
])
def test_tap_keeps_the_backbones_deepest_feature(arch, key, channels) -> None:
    model = tiny_model(arch)
    tap = FeatureTap(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
        expected = model.net.backbone((x - model.mean) / model.std)[key]
    assert tap.channels == channels
    torch.testing.assert_close(tap.take(), expected)
    with pytest.raises(RuntimeError, match="has not run"):
        tap.take()


def test_multilevel_net_main_output_is_the_models() -> None:
    model = tiny_model()
    net = MultiLevelNet(model, 5).eval()
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        main, aux = net(x)
        expected = model(x)
    torch.testing.assert_close(main, expected)
    assert aux.shape == main.shape


def test_charbonnier_entropy_against_numpy() -> None:
    logits = torch.randn(2, 4, 3, 5)
    p = np.exp(logits.double().numpy())
    p /= p.sum(1, keepdims=True)
    e = -(p * np.log(p)).sum(1) / np.log(4)
    expected = ((e ** 2 + 1e-6) ** 2).mean()
    assert adversarial.charbonnier_entropy(logits).item() == pytest.approx(expected, rel=1e-5)


def test_domain_loss_is_bce_of_each_patch_against_its_samples_domain() -> None:
    d = OutputDiscriminator(3, width=4)
    logits = torch.randn(2, 3, 64, 64)
    domains = torch.tensor([0.0, 1.0])
    pred = d(logits.softmax(1)).detach().double().numpy()
    prob = 1 / (1 + np.exp(-pred))
    expected = -(np.log(1 - prob[0]).sum() + np.log(prob[1]).sum()) / pred.size
    assert adversarial.domain_loss(d, logits, domains).item() == pytest.approx(expected, rel=1e-5)


def test_fda_style_gives_each_source_frame_its_targets_low_amplitudes() -> None:
    torch.manual_seed(0)
    source = 0.3 + 0.4 * torch.rand(2, 3, 40, 48)  # mid-range: the final clamp to [0, 1] does not bite
    target = torch.stack([0.2 + 0.1 * torch.rand(3, 40, 48), 0.6 + 0.1 * torch.rand(3, 40, 48)])
    styled = fda_style(source, target, beta=0.05)
    b = band_size(40, 48, 0.05)
    for i in range(2):  # frame by frame, with the one-band transfer
        alone = transfer(source[i:i + 1], low_freq_amplitude(target[i:i + 1], b)[0], b, mode="swap")
        torch.testing.assert_close(styled[i:i + 1], alone)
    # the zero frequency is inside the band: each styled frame has its target's mean colour
    torch.testing.assert_close(styled.mean((2, 3)), target.mean((2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fda_style(source, target, beta=0.0), source)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_source_stats_bn_normalises_every_sample_with_the_source_samples_statistics(momentum) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)  # as a layer's input inside a network
    reference = nn.BatchNorm2d(3, momentum=momentum).train()
    nn.init.uniform_(reference.weight)
    nn.init.uniform_(reference.bias)
    model = norms.wrap(nn.Sequential(copy.deepcopy(reference)), norms.SourceStatsBatchNorm2d).train()
    with norms.source_first(model, 2):
        out = model(x)
    expected_source = reference(x[:2])  # a plain BN in train mode that sees the source samples alone
    torch.testing.assert_close(out[:2], expected_source)
    mean, var = x[:2].mean((0, 2, 3)), x[:2].var((0, 2, 3), unbiased=False)
    by_hand = (x[2:] - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    torch.testing.assert_close(out[2:], by_hand * reference.weight[:, None, None] + reference.bias[:, None, None])
    plain = norms.plain(model)[0]
    assert isinstance(plain, nn.BatchNorm2d)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[k], v, msg=k)  # running statistics from the source alone
    # the gradient flows through the source statistics, as through BatchNorm2d's batch statistics
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    x2 = x.detach().clone().requires_grad_()
    src = x2[:2]
    m, v = src.mean((0, 2, 3), keepdim=True), src.var((0, 2, 3), unbiased=False, keepdim=True)
    direct = (x2 - m) / torch.sqrt(v + 1e-5) * reference.weight[:, None, None] + reference.bias[:, None, None]
    (expected,) = torch.autograd.grad((direct * weights).sum(), x2)
    torch.testing.assert_close(grad, expected)


def test_dual_bn_normalises_each_domain_with_its_own_branch() -> None:
    torch.manual_seed(0)
    dual = norms.DualBatchNorm2d(nn.BatchNorm2d(3)).train()
    with torch.no_grad():
        dual.source.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        dual.target.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    x = torch.randn(5, 3, 4, 4)
    model = nn.Sequential(dual)
    with norms.source_first(model, 2):
        out = model(x)
    assert dual.source_count is None  # only inside the block

    def by_hand(x, branch):
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + 1e-5)
        return y * branch.weight[None, :, None, None] + branch.bias[None, :, None, None]

    torch.testing.assert_close(out[:2], by_hand(x[:2], dual.source), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2:], by_hand(x[2:], dual.target), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dual.source.running_mean, 0.1 * x[:2].mean((0, 2, 3)))
    torch.testing.assert_close(dual.target.running_mean, 0.1 * x[2:].mean((0, 2, 3)))
    dual.eval()
    torch.testing.assert_close(dual(x), dual.target(x))  # outside a block: the target branch


def test_plain_takes_the_target_branch_except_where_switched() -> None:
    model = tiny_model()
    original = model.state_dict()
    norms.wrap(model, norms.DualBatchNorm2d)
    for name, m in model.named_modules():
        if isinstance(m, norms.DualBatchNorm2d):
            nn.init.constant_(m.source.weight, 2.0)
            nn.init.constant_(m.target.weight, 3.0)
    plain = norms.plain(model, ["net.backbone.1"])
    assert plain.state_dict().keys() == original.keys()  # a plain network again
    for name, m in plain.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.weight.unique().item() == (2.0 if name.startswith("net.backbone.1") else 3.0), name
    with pytest.raises(ValueError, match="names no BN layer"):
        norms.plain(model, ["net.nowhere"])


def test_dual_then_plain_without_training_is_the_same_network() -> None:
    model = tiny_model()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        out = norms.plain(norms.wrap(model, norms.DualBatchNorm2d)).eval()(x)
    torch.testing.assert_close(out, expected)


def test_class_thresholds_keep_each_class_top_fraction_capped() -> None:
    confidence = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.95, 0.97, 0.99, 0.6])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2])
    thresholds, present = pseudo_labels.class_thresholds(confidence, labels, 4, top_fraction=0.4, cap=0.9)
    # class 0: the top 40 % of 5 values lie at or above the 60th percentile, 0.4 (numpy's "lower" method)
    assert thresholds[0].item() == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4, 0.5], 60, method="lower"))
    assert thresholds[1].item() == pytest.approx(0.9)  # 0.97 capped at 0.9
    assert thresholds[2].item() == pytest.approx(0.6) and thresholds[3].item() == pytest.approx(0.9)
    assert present.tolist() == [True, True, True, False]


def test_pseudo_labels_ignore_pixels_under_their_class_threshold() -> None:
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 6, 7).softmax(1)
    labeller = pseudo_labels.PseudoLabeller(3, 255, top_fraction=0.5, cap=0.9)
    labeller.fit(probs, torch.randn(2, 4, 3, 4))
    labels = labeller(probs, torch.randn(2, 4, 3, 4))  # no prototypes: the features are not read
    conf, arg = probs.max(1)
    for c in range(3):
        kept = (labels == c)
        assert torch.equal(kept, (arg == c) & (conf >= labeller.thresholds[c]))
        assert 0.45 <= kept.sum() / (arg == c).sum() <= 0.55 + 1 / (arg == c).sum()  # about half
    assert set(labels.unique().tolist()) <= {0, 1, 2, 255}


def test_class_mix_pastes_half_of_each_source_crops_classes_whole_with_their_labels() -> None:
    torch.manual_seed(0)
    ys, yt = torch.randint(0, 5, (3, 6, 7)), torch.randint(0, 5, (3, 6, 7))
    ys[0, 0] = 255  # ignored pixels: never a class to paste
    ys[2] = 3  # a crop of one class: pasted whole
    xs, xt = torch.rand(3, 3, 6, 7), 2 + torch.rand(3, 3, 6, 7)  # apart: each pixel tells its origin
    x, y = class_mix(xs, ys, xt, yt, 255)
    from_source = (x == xs).all(1)
    assert ((x == xt).all(1) | from_source).all()
    for mask, labels in zip(from_source, ys):
        classes = set(labels[labels != 255].tolist())
        pasted = set(labels[mask].tolist())
        assert pasted <= classes and len(pasted) == (len(classes) + 1) // 2
        assert torch.equal(mask, torch.isin(labels, torch.tensor(sorted(pasted)))), "a class goes whole or not at all"
    assert torch.equal(y, torch.where(from_source, ys, yt)) and from_source[2].all()


def unit(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def test_prototypes_and_rectification_against_a_direct_implementation() -> None:
    """fit: prototypes are the mean unit feature of the pixels the plain thresholds keep; then the
    softmax is rectified by softmax(cos / tau) over the prototypes and the thresholds set again.
    Features at the labels' size, so that no resampling enters."""
    torch.manual_seed(0)
    probs, features = torch.rand(2, 3, 5, 6).mul(3).softmax(1), torch.randn(2, 4, 5, 6)
    labeller = pseudo_labels.PseudoLabeller(3, 9, top_fraction=0.6, cap=0.8, tau=0.5)
    labeller.fit(probs, features)

    # in float64 from the float32 inputs: a threshold is one of the confidences, exactly
    p, f = probs.double().numpy(), unit(features.double().numpy().transpose(0, 2, 3, 1), -1)  # f: [N, H, W, D]

    def thresholds_of(q):
        conf, arg = q.max(1), q.argmax(1)
        return np.array([min(0.8, np.sort(conf[arg == c])[int(0.4 * ((arg == c).sum() - 1))]) for c in range(3)])

    def labels_of(q, t):
        conf, arg = q.max(1), q.argmax(1)
        return np.where(conf >= t[arg], arg, 9)

    def rectified(protos):
        w = np.exp((f @ protos.T) / 0.5).transpose(0, 3, 1, 2)
        q = p * w / w.sum(1, keepdims=True)
        return q / q.sum(1, keepdims=True)

    labels = labels_of(p, thresholds_of(p))
    protos = unit(np.stack([f[labels == c].mean(0) for c in range(3)]), -1)
    labels = labels_of(rectified(protos), thresholds_of(rectified(protos)))  # fit's second round
    protos = unit(np.stack([f[labels == c].mean(0) for c in range(3)]), -1)
    q = rectified(protos)
    np.testing.assert_allclose(labeller.prototypes.numpy(), protos, atol=1e-6)
    np.testing.assert_allclose(labeller.rectify(probs, features).numpy(), q, atol=1e-6)
    np.testing.assert_array_equal(labeller(probs, features).numpy(), labels_of(q, labeller.thresholds.numpy()))


def test_running_thresholds_and_prototypes_move_only_for_the_classes_of_a_batch() -> None:
    torch.manual_seed(0)
    labeller = pseudo_labels.PseudoLabeller(3, 9, top_fraction=0.5, cap=0.95, tau=0.1, momentum=0.75)
    labeller.fit(torch.rand(2, 3, 4, 4).softmax(1), torch.randn(2, 5, 4, 4))
    before = copy.deepcopy(labeller.state_dict())
    probs = torch.zeros(1, 3, 4, 4)
    probs[:, 1] = 1.0  # a batch of class 1 alone, certain whatever the prototypes say
    features = torch.randn(1, 5, 4, 4)
    labels = labeller(probs, features, update=True)

    assert torch.equal(labels, torch.ones(1, 4, 4, dtype=torch.long))
    old_t, old_p = before["thresholds"], before["prototypes"]
    expected_t = old_t.clone()
    expected_t[1] = 0.75 * old_t[1] + 0.25 * 0.95  # the batch's class-1 threshold: 1.0, capped
    torch.testing.assert_close(labeller.thresholds, expected_t)
    mean = F.normalize(features, dim=1).mean((0, 2, 3))  # every pixel of the batch is kept
    expected_p = old_p.clone()
    expected_p[1] = F.normalize(0.75 * old_p[1] + 0.25 * mean, dim=0)
    torch.testing.assert_close(labeller.prototypes, expected_p)

    restored = pseudo_labels.PseudoLabeller(3, 9, top_fraction=0.5, cap=0.95, tau=0.1)
    restored.load_state_dict(labeller.state_dict())
    mixed = torch.rand(1, 3, 4, 4).softmax(1)
    assert torch.equal(restored(mixed, features), labeller(mixed, features))
