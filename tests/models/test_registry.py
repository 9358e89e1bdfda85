"""models/registry.py: every architecture builds and maps [B, 3, H, W] to logits [B, C, H, W]."""
import pytest
import torch

from driftseg.models.registry import SegmentationNet, create_model, list_architectures

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCHS = ["deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_list_architectures() -> None:
    assert list_architectures() == ARCHS  # sorted


@pytest.mark.parametrize("arch", [
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    pytest.param("deeplabv3_resnet50", marks=pytest.mark.slow),
])
def test_builds_and_returns_logits_at_input_size(arch) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 5, MEAN, STD).eval()
    assert isinstance(model, SegmentationNet)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))  # not square: H and W must not be swapped
    assert out.shape == (1, 5, 64, 96)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_every_registered_architecture_is_covered() -> None:
    # the parametrisation above must be extended when an architecture is added
    assert set(list_architectures()) == set(ARCHS)


def test_train_mode_batch_and_backward() -> None:
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", 3, MEAN, STD).train()
    x = torch.rand(2, 3, 48, 64)
    out = model(x)
    assert out.shape == (2, 3, 48, 64)
    out.square().mean().backward()
    assert model.net.classifier.high_classifier.weight.grad is not None


def test_normalisation_lives_inside_the_network() -> None:
    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", 4, MEAN, STD).eval()
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(STD))
    assert {"mean", "std"} <= set(model.state_dict())  # buffers travel with the weights
    x = torch.rand(1, 3, 32, 48)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std)["out"])
        assert not torch.allclose(model(x), model.net(x)["out"])


def test_no_pretrained_weights_are_used() -> None:
    # two builds with different seeds differ: weights are random, not downloaded
    torch.manual_seed(0)
    a = create_model("lraspp_mobilenet_v3_large", 3, MEAN, STD)
    torch.manual_seed(1)
    b = create_model("lraspp_mobilenet_v3_large", 3, MEAN, STD)
    assert not torch.equal(a.net.backbone["0"][0].weight, b.net.backbone["0"][0].weight)


def test_unknown_architecture_names_the_choices() -> None:
    with pytest.raises(ValueError) as err:
        create_model("unet_tiny", 3, MEAN, STD)
    msg = str(err.value)
    assert "'unet_tiny'" in msg
    for arch in ARCHS:
        assert arch in msg


def test_fold_batchnorm_keeps_the_output_and_removes_every_bn() -> None:
    from driftseg.models.batchnorm import fold_batchnorm

    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", 4, (0.5,) * 3, (0.25,) * 3).train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 96))  # statistics away from 0 / 1
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_classifier_features_are_what_the_lraspp_classifier_sees() -> None:
    from torch.nn import functional as F

    from driftseg.models.registry import classifier_features, feature_channels

    torch.manual_seed(0)
    model = create_model("lraspp_mobilenet_v3_large", 5, MEAN, STD).eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        logits, coarse, features = classifier_features(model, images)
        expected = model(images)
    torch.testing.assert_close(logits, expected)
    assert features.shape == (2, feature_channels(model), 8, 12) and coarse.shape == (2, 5, 8, 12)  # stride 8
    # the head's two 1x1 classifiers are one linear classifier on the concatenated features
    head = model.net.classifier
    weight = torch.cat([head.low_classifier.weight, head.high_classifier.weight], 1)
    torch.testing.assert_close(coarse, F.conv2d(features, weight, head.low_classifier.bias + head.high_classifier.bias),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.interpolate(coarse, size=(64, 96), mode="bilinear", align_corners=False), logits)
