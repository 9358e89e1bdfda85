import pytest
import torch
from synthetic_frames import domain_frames


def pytest_collection_modifyitems(config, items):
    """GPU tests run where torch sees a CUDA device and are skipped, saying so, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions run far faster on one thread, above all beside another CPU job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ckpt():
    """A small LRASPP checkpoint with CamVid's 11 classes, input 32x48, BN statistics of
    `domain_frames(seed=0)`, its amplitude band and a shift calibration on it."""
    from driftseg.adapters.auto import calibrate
    from driftseg.adapters.ema_bn import AdaptedNet
    from driftseg.adapters.fda import low_freq_amplitude
    from driftseg.data.folder import FrameFolder
    from driftseg.models.checkpoint import Checkpoint, compact_weights
    from driftseg.models.registry import create_model

    torch.manual_seed(0)
    folder = FrameFolder.open(None)
    model = create_model("lraspp_mobilenet_v3_large", len(folder.class_names), (0.5,) * 3, (0.25,) * 3)
    frames = torch.nn.functional.interpolate(domain_frames(16, seed=0), size=(32, 48), mode="bilinear")
    model.train()
    with torch.no_grad():
        bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bn:
            m.momentum = None  # cumulative average: the statistics of all 16 frames
        model(frames)
    model.eval()
    ckpt = Checkpoint(
        arch="lraspp_mobilenet_v3_large", arch_kwargs={}, class_names=list(folder.class_names),
        palette=[list(c) for c in folder.palette], mean=[0.5] * 3, std=[0.25] * 3, input_size=[32, 48],
        weights=compact_weights(model.state_dict()), source_amplitude=low_freq_amplitude(frames, 3).mean(0),
        source_amplitude_beta=0.1,
    )
    adapted = AdaptedNet(ckpt.build_model()).eval()
    ckpt.extra["shift"] = calibrate(adapted, (f[None] for f in frames), 0.1, "synthetic").to_dict()
    return ckpt
