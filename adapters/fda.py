"""Test-time Fourier Domain Adaptation (Yang & Soatto, CVPR 2020).

Low spatial frequencies carry global appearance (illumination, colour cast,
haze) while phase carries structure. Each frame's low-frequency amplitude is
moved towards the source domain's, with phase kept, before the frame reaches a
source-trained model. The window follows the official FDA code: the four
b x b corners of the unshifted 2-D spectrum, handled here as the centred
2b x 2b block ("band") of the fftshift-ed spectrum.

Amplitudes are plain |fft2| (unnormalised, so they scale with H * W): a source
band must come from images of the same size as the frames it is applied to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from driftseg.adapters.component import INPUT, Component

MODES = ("swap", "ratio")
# Guards source / recent where both amplitudes vanish; the ratio then tends to 1.
_EPS = 1e-6


def band_size(height: int, width: int, beta: float) -> int:
    """Half-width b of the band: floor(min(H, W) * beta), as in the official code."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    # beta > 0.5 would make the 2b x 2b band larger than the spectrum.
    if not 0.0 <= beta <= 0.5:
        raise ValueError(f"beta must be in [0, 0.5], got {beta}")
    return math.floor(min(height, width) * beta)


def _check_images(images: Tensor, b: int) -> None:
    """Validate [B, 3, H, W] and a band that fits: 0 <= b <= min(H, W) // 2."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
    h, w = images.shape[-2:]
    if not 0 <= b <= min(h, w) // 2:
        raise ValueError(f"b must be in [0, min(H, W) // 2] = [0, {min(h, w) // 2}], got {b}")


def _band_slices(height: int, width: int, b: int) -> tuple[slice, slice]:
    """Rows and cols of the band in the fftshift-ed spectrum."""
    ch, cw = height // 2, width // 2
    return slice(ch - b, ch + b), slice(cw - b, cw + b)


def _centred_spectrum(images: Tensor) -> Tensor:
    # float32: torch's half FFT is limited to power-of-two sizes.
    return torch.fft.fftshift(torch.fft.fft2(images.to(torch.float32)), dim=(-2, -1))


def center_crop_band(band: Tensor, b: int) -> Tensor:
    """Centre 2b x 2b of a band [..., 2b', 2b'] with b' >= b (same frequencies, narrower)."""
    size = band.shape[-1]
    if band.dim() < 2 or band.shape[-2] != size or size % 2:
        raise ValueError(f"band must have shape [..., 2b', 2b'], got {list(band.shape)}")
    if not 0 <= b <= size // 2:
        raise ValueError(f"b must be in [0, {size // 2}] for a band of size {size}, got {b}")
    start = size // 2 - b
    return band[..., start : start + 2 * b, start : start + 2 * b]


def low_freq_amplitude(images: Tensor, b: int) -> Tensor:
    """[B, 3, 2b, 2b] centred low-frequency band of |fft2(images)|."""
    _check_images(images, b)
    rows, cols = _band_slices(images.shape[-2], images.shape[-1], b)
    return _centred_spectrum(images)[..., rows, cols].abs()


def _check_transfer_args(images: Tensor, b: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_images(images, b)


def _new_band(band: Tensor, source: Tensor, mode: str, recent_band: Tensor | None) -> Tensor:
    """Complex band with moved amplitude and the original phase."""
    if mode == "swap":
        return torch.polar(source.expand(band.shape).contiguous(), band.angle())
    if recent_band is None:
        raise ValueError("mode 'ratio' needs recent_band of shape [B, 3, 2b, 2b]")
    if recent_band.shape != band.shape:
        raise ValueError(
            f"recent_band must have shape [B, 3, 2b, 2b] = {list(band.shape)}, "
            f"got {list(recent_band.shape)}"
        )
    recent = recent_band.to(device=band.device, dtype=torch.float32)
    # A positive real factor scales the amplitude and leaves the phase exact.
    return band * ((source + _EPS) / (recent + _EPS))


def transfer_unclamped(
    images: Tensor,
    source_band: Tensor,
    b: int,
    mode: str = "ratio",
    recent_band: Tensor | None = None,
) -> Tensor:
    """transfer() before the final clamp to [0, 1], in float32."""
    _check_transfer_args(images, b, mode)
    if b == 0:
        return images.to(torch.float32)
    if source_band.dim() not in (3, 4) or source_band.shape[-3] != 3 or (
        source_band.dim() == 4 and source_band.shape[0] != images.shape[0]
    ):
        raise ValueError(
            f"source_band must have shape [3, 2b', 2b'] or [B, 3, 2b', 2b'] (one per image), "
            f"got {list(source_band.shape)} for {images.shape[0]} images"
        )
    source = center_crop_band(source_band, b).to(device=images.device, dtype=torch.float32)

    h, w = images.shape[-2:]
    rows, cols = _band_slices(h, w, b)
    spectrum = _centred_spectrum(images)
    spectrum[..., rows, cols] = _new_band(spectrum[..., rows, cols], source, mode, recent_band)
    spatial = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)))
    # The band is not closed under k -> -k, so the result has a small imaginary part;
    # the real part is what the official code keeps.
    return spatial.real


def transfer(
    images: Tensor,
    source_band: Tensor,
    b: int,
    mode: str = "ratio",
    recent_band: Tensor | None = None,
) -> Tensor:
    """Move each frame's low-frequency amplitude towards the source domain.

    images: [B, 3, H, W] raw RGB in [0, 1]. source_band: [3, 2b', 2b'], b' >= b,
    the source domain's mean amplitude band (its centre 2b x 2b is used), or
    [B, 3, 2b', 2b'], one band per image (training-time styling: each source
    image takes the amplitude of a target image).
    mode "swap": band amplitude := source amplitude (original FDA); recent_band is
    not used.
    mode "ratio": band amplitude *= source / recent_band, recent_band [B, 3, 2b, 2b]
    being the stream's running mean band; keeps each frame's own variation and
    removes only the stream's mean shift.
    b == 0 returns images unchanged. Otherwise the result is clamped to [0, 1]
    and has images' dtype.
    """
    _check_transfer_args(images, b, mode)
    if b == 0:
        return images
    out = transfer_unclamped(images, source_band, b, mode, recent_band)
    return out.clamp_(0.0, 1.0).to(images.dtype)


def update_recent(recent_band: Tensor, frame_band: Tensor, momentum: float) -> Tensor:
    """EMA (1 - momentum) * recent + momentum * frame, batched [B, 3, 2b, 2b]."""
    if recent_band.shape != frame_band.shape:
        raise ValueError(
            f"frame_band must have the shape of recent_band {list(recent_band.shape)}, "
            f"got {list(frame_band.shape)}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return (1.0 - momentum) * recent_band + momentum * frame_band.to(recent_band)


@dataclass
class FDAState:
    """Running low-frequency amplitude of one stream."""

    recent_band: Tensor  # [3, 2b, 2b]: EMA of recent frames' amplitude band
    frames: int  # frames folded in so far
    source_band: Tensor  # [3, 2b, 2b]: start point, restored by reset()

    @classmethod
    def initial(cls, source_band_cropped: Tensor) -> FDAState:
        """Start at the source band, so the first frames are not over-corrected."""
        shape = source_band_cropped.shape
        if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2] or shape[1] % 2:
            raise ValueError(f"source_band_cropped must have shape [3, 2b, 2b], got {list(shape)}")
        source = source_band_cropped.detach().clone()
        return cls(recent_band=source.clone(), frames=0, source_band=source)

    def reset(self) -> None:
        self.recent_band = self.source_band.clone()
        self.frames = 0

    def state_dict(self) -> dict[str, Tensor | int]:
        return {"recent_band": self.recent_band.clone(), "frames": self.frames}

    def load_state_dict(self, d: dict[str, Tensor | int]) -> None:
        shape = list(self.source_band.shape)
        recent = d.get("recent_band")
        if not isinstance(recent, Tensor) or list(recent.shape) != shape:
            got = list(recent.shape) if isinstance(recent, Tensor) else type(recent).__name__
            raise ValueError(f"recent_band must be a tensor of shape {shape}, got {got}")
        frames = d.get("frames")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise ValueError(f"frames must be a non-negative int, got {frames!r}")
        self.recent_band = recent.to(self.source_band).clone()
        self.frames = frames


@dataclass(frozen=True)
class FDAConfig:
    beta: float = 0.01  # the band's half-width as a share of the frame's shorter side
    mode: str = "ratio"  # swap: the source's amplitude; ratio: scaled by source / the stream's recent mean
    m: float = 0.1  # momentum of the stream's recent amplitude

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"fda mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.beta <= 0.5:
            raise ValueError(f"fda beta must be in [0, 0.5], got {self.beta}")
        if not 0.0 < self.m <= 1.0:
            raise ValueError(f"fda m must be in (0, 1], got {self.m}")


class FDA(Component):
    """`fda`: a stream's part is its FDAState ("fda"); in the batch, "fda_recent" [B, 3, 2b, 2b]. A band
    narrower than one frequency at the network's input size (b = 0) leaves frames as they are."""

    name, stage, Config = "fda", INPUT, FDAConfig
    no_export_reason = "FDA's FFT has no ONNX export here"

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.b = band_size(*ckpt.input_size, config.beta)
        if self.b:
            self.source_band = center_crop_band(ckpt.source_amplitude.float(), self.b).to(device)

    def new_state(self):
        return {"fda": FDAState.initial(self.source_band)} if self.b else {}

    def stack(self, states):
        if not self.b:
            return {}
        return {"fda_recent": torch.stack([s.parts["fda"].recent_band for s in states]),
                "fda_frames": torch.tensor([s.parts["fda"].frames for s in states], device=self.device)}

    def forward(self, images, batch, out, scratch):
        if not self.b:
            return images
        out["fda_recent"] = update_recent(batch["fda_recent"], low_freq_amplitude(images, self.b), self.config.m)
        out["fda_frames"] = batch["fda_frames"] + 1
        return transfer(images, self.source_band, self.b, self.config.mode, out["fda_recent"])

    def scatter(self, old, new, out):
        if self.b:
            for s, prev, recent, frames in zip(new, old, out["fda_recent"], out["fda_frames"].tolist()):
                s.parts["fda"] = replace(prev.parts["fda"], recent_band=recent, frames=frames)

    def describe(self, state):
        fda = state.parts.get("fda")
        return {"fda": {"frames": fda.frames, "band": int(fda.recent_band.shape[-1])}} if fda else {}
