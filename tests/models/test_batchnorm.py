"""models/batchnorm.py: for every supported kind of network, the adapted network at alpha 1 (the
source statistics) is the frozen model, and the folded network is the unfolded one."""
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from driftseg.adapters.ema_bn import AdaptedNet, StreamBatchNorm2d
from driftseg.models.batchnorm import adaptable_norms, fold_batchnorm, foldable_pairs, normalize_per_sample, other_norms
from driftseg.models.registry import create_model, trust_module

from byom_nets import randomise_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")
trust_module("byom_nets")  # tests/byom_nets.py (tests/ is on sys.path, as for synthetic_frames)

smp = pytest.importorskip  # noqa: E731  (called per case, so a missing extra skips only the smp cases)

# arch, arch_kwargs, input size, (adapted BN layers, conv-BN pairs folded), needs
CASES = [
    ("lraspp_mobilenet_v3_large", {}, (32, 48), (47, 47), None),
    ("deeplabv3_mobilenet_v3_large", {}, (32, 48), (53, 53), None),
    pytest.param("deeplabv3_resnet50", {}, (32, 48), (60, 60), None, marks=pytest.mark.slow),
    ("torchvision:fcn_resnet50", {}, (32, 48), (54, 54), None),
    ("smp:Unet:resnet18", {}, (64, 64), (30, 30), "segmentation_models_pytorch"),
    # a timm encoder: every BN layer is timm's BatchNormAct2d, whose activation must survive
    ("smp:FPN:tu-efficientnet_b0", {}, (64, 64), (48, 48), "timm"),
    # stem, block.bn1, block.bn2, skip.bn; not the BN after a conv used twice, after a pool, after a BN
    ("byom_nets:build", {}, (32, 48), (7, 4), None),
    # the top does not trace: the block's two pairs are found in its own trace, the rest is left
    ("byom_nets:build", {"traceable": False}, (32, 48), (7, 2), None),
]


def randomised(arch: str, kwargs: dict, classes: int = 5) -> nn.Module:
    """The network in eval mode with BN statistics and affine parameters away from 0 / 1."""
    torch.manual_seed(0)
    return randomise_batchnorm(create_model(arch, classes, (0.5,) * 3, (0.25,) * 3, **kwargs).eval())


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max().item()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("arch,kwargs,size,counts,needs", CASES)
def test_adapted_at_source_statistics_and_folded_equal_the_frozen_model(arch, kwargs, size, counts, needs) -> None:
    if needs:
        smp(needs)
    model = randomised(arch, kwargs)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        frozen = model(x)
        adapted = AdaptedNet(model).eval()
        state = adapted.source_state()[None].repeat(2, 1, 1)
        logits, _ = adapted(x, state, torch.full((2,), 0.1), torch.ones(2))
        folded = fold_batchnorm(model)(x)
    assert (len(adaptable_norms(model)), len(foldable_pairs(model))) == counts
    close(logits, frozen)
    close(folded, frozen)


def test_timm_batchnorm_act_keeps_its_activation() -> None:
    smp("timm")
    model = randomised("smp:FPN:tu-efficientnet_b0", {})
    adapted = AdaptedNet(model)
    norms = [m for m in adapted.modules() if isinstance(m, StreamBatchNorm2d)]
    assert len(norms) == 48 and all(n.after is not None for n in norms)
    assert {type(n.after[1]).__name__ for n in norms} >= {"SiLU"}  # efficientnet's swish is there
    # folded, the layer leaves its dropout and activation behind
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    assert sum(isinstance(m, nn.SiLU) for m in folded.modules()) == sum(isinstance(m, nn.SiLU) for m in model.modules())


def test_unknown_subclass_is_left_as_it_is_and_said() -> None:
    model = randomised("byom_nets:build", {})
    assert other_norms(model) == ["net.scaled"]
    adapted = AdaptedNet(model)
    assert adapted.left == ["net.scaled"]
    assert type(adapted.model.get_submodule("net.scaled")).__name__ == "ScaledBatchNorm2d"
    assert "net.scaled" not in adapted.layer_names and "net.plain" in adapted.layer_names
    # the shared conv's BN is adapted but never folded (folding it would change the conv's other use)
    folded = fold_batchnorm(model)
    assert isinstance(folded.get_submodule("net.shared_bn"), nn.BatchNorm2d)
    assert isinstance(folded.get_submodule("net.stem_bn"), nn.Identity)


def test_folding_the_rest_keeps_the_adapted_layers_by_name() -> None:
    model = randomised("byom_nets:build", {})
    names = adaptable_norms(model)
    adapted = AdaptedNet(model, layers=2)
    assert adapted.layer_names == names[:2]
    assert not any(isinstance(m, nn.BatchNorm2d) and type(m) is nn.BatchNorm2d
                   for name, m in adapted.model.named_modules() if name in {"net.block.bn2", "net.skip.bn"})
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        logits, _ = adapted(x, adapted.source_state()[None], torch.full((1,), 0.1), torch.ones(1))
        close(logits, model(x))


def test_a_network_without_batchnorm_is_refused_saying_what_still_works() -> None:
    model = create_model("byom_nets:build_without_bn", 3, (0.5,) * 3, (0.25,) * 3).eval()
    with pytest.raises(ValueError, match="no BatchNorm layer") as err:
        AdaptedNet(model)
    assert "label calibration" in str(err.value) and "source+lc" in str(err.value)
    assert foldable_pairs(model) == [] and fold_batchnorm(model)(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_normalising_per_sample_compiled_keeps_the_scale_and_shift_per_channel_and_equals_the_formula() -> None:
    from torch._inductor.utils import run_and_get_code

    from driftseg.adapters.backends import compile_step

    torch.manual_seed(0)
    x = torch.randn(2, 5, 24, 32)
    mean, var = torch.randn(2, 5), torch.rand(2, 5) + 0.5
    weight, bias = torch.randn(5), torch.randn(5)

    def normalise(x, mean, var):
        return normalize_per_sample(x, mean * 2, var.square(), weight, bias, 1e-5)  # statistics computed in the graph

    got, (code,) = run_and_get_code(compile_step(normalise, x.device), x, mean, var)
    expected = (x - 2 * mean[:, :, None, None]) / torch.sqrt(var.square()[:, :, None, None] + 1e-5) \
        * weight[None, :, None, None] + bias[None, :, None, None]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the rsqrt is taken in a loop over the channels, before the loop over every pixel (per_channel)
    kernel = code.split("async_compile.cpp_pybinding")[1].split("''')")[0]
    pixels = kernel.find(f"<static_cast<int64_t>({24 * 32}L)")
    assert pixels > 0 and "rsqrt" in kernel[:pixels] and "rsqrt" not in kernel[pixels:]
