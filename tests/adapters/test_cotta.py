"""CoTTA (adapters/cotta.py) against the official segmentation loop written out here (teacher views,
anchor mask, cross-entropy step, EMA teacher, stochastic restore), on a tiny network."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.cotta import SCALES, CoTTAStream, configure


def _tiny_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    return net.eval()


class _Reference:
    """single_gpu_cotta's body for one frame at a time, with the models' BN on each forward's statistics."""

    def __init__(self, model, lr, ema, restore, conf):
        self.model = configure(model)
        self.ema_model, self.anchor_model = copy.deepcopy(self.model), copy.deepcopy(self.model)
        self.anchor = copy.deepcopy(self.model.state_dict())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.999))
        self.ema, self.restore, self.conf = ema, restore, conf
        self.generator = torch.Generator().manual_seed(0)

    def step(self, img):
        with torch.no_grad():
            h, w = img.shape[-2:]
            views = []
            for s in SCALES:
                x = F.interpolate(img, size=(int(h * s), int(w * s)), mode="bilinear", align_corners=False)
                for flip in (False, True):
                    out = self.ema_model(x.flip(3) if flip else x)
                    out = F.interpolate(out.flip(3) if flip else out, size=(h, w), mode="bilinear", align_corners=False)
                    views.append(out.softmax(1))
            probs = torch.stack(views).mean(0)
            probs_standard = views[2 * SCALES.index(1.0)]  # scale 1, not flipped
            mask = (self.anchor_model(img).softmax(1).max(1)[0] > self.conf).float()[:, None]
            result = mask * probs_standard + (1 - mask) * probs
        loss = F.cross_entropy(self.model(img), result.argmax(1))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            for ema_param, param in zip(self.ema_model.parameters(), self.model.parameters()):
                ema_param.data[:] = self.ema * ema_param[:].data[:] + (1 - self.ema) * param[:].data[:]
            for nm, m in self.model.named_modules():
                for npp, p in m.named_parameters(recurse=False):
                    if npp in ["weight", "bias"] and p.requires_grad:
                        keep = (torch.rand(p.shape, generator=self.generator) < self.restore).float()
                        p.data = self.anchor[f"{nm}.{npp}"] * keep + p * (1.0 - keep)
        return result


@pytest.mark.parametrize("conf", [0.0, 0.69, 1.0])  # the single view everywhere, mixed, the average everywhere
def test_three_frames_equal_the_official_loop(conf) -> None:
    model = _tiny_net()
    stream = CoTTAStream(configure(model), lr=1e-2, ema=0.9, restore=0.3, conf=conf)
    ref = _Reference(model, lr=1e-2, ema=0.9, restore=0.3, conf=conf)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        img = torch.rand(1, 3, 8, 12, generator=g)
        with torch.no_grad():
            got = stream.forward_and_adapt(img)
        torch.testing.assert_close(got.exp(), ref.step(img), atol=1e-5, rtol=1e-5)
    for a, b in zip(stream.student.parameters(), ref.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(stream.teacher.parameters(), ref.ema_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_restore_one_brings_the_student_back_and_the_source_is_never_written() -> None:
    source = configure(_tiny_net(seed=2))
    before = copy.deepcopy(source.state_dict())
    stream = CoTTAStream(source, lr=1e-1, ema=0.5, restore=1.0, conf=0.69)
    stream.forward_and_adapt(torch.rand(1, 3, 8, 12))
    for a, b in zip(stream.student.parameters(), source.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(stream.teacher.parameters(), source.parameters()))
    for k, v in source.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_state_dict_round_trip_continues_identically() -> None:
    source = configure(_tiny_net(seed=3))
    a, b = (CoTTAStream(source, lr=1e-2, ema=0.9, restore=0.2, conf=0.69) for _ in range(2))
    a.forward_and_adapt(torch.rand(1, 3, 8, 12))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    img = torch.rand(1, 3, 8, 12)
    torch.testing.assert_close(a.forward_and_adapt(img), b.forward_and_adapt(img))
    for pa, pb in zip(a.student.parameters(), b.student.parameters()):
        assert torch.equal(pa, pb)


def test_configure_needs_batch_norm() -> None:
    with pytest.raises(ValueError, match="BatchNorm2d"):
        configure(nn.Sequential(nn.Conv2d(3, 2, 1)))
