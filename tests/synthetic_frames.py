"""Synthetic frames for tests: smooth random scenes from one 'domain', and shifted domains."""
import torch


def domain_frames(n: int, seed: int, shift: float = 0.0, size=(40, 60)) -> torch.Tensor:
    """n frames [n, 3, H, W] in [0, 1] from one synthetic 'domain': smooth random scenes, with
    `shift` darkening and tinting them (another domain)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 5, 6, generator=g)
    frames = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    frames = (frames + 0.05 * torch.randn(n, 3, *size, generator=g)).clamp(0, 1)
    if shift:
        frames = (frames * (1 - shift)) ** (1 + 2 * shift) * torch.tensor([1.0, 0.7, 1.3])[:, None, None]
    return frames.clamp(0, 1)
