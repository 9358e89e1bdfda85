"""Synthetic shifts: the `imagecorruptions` package (Michaelis et al. 2019) and the protocol's night.

imagecorruptions 1.1.2 predates NumPy 2 and scikit-image 0.19; the shims below let it run on
current releases without pinning old ones, and make every corruption reproducible from one seed.
"""
import warnings
from types import SimpleNamespace

import numpy as np

if not hasattr(np, "float_"):
    np.float_ = np.float64  # removed in NumPy 2; imagecorruptions still references it

with warnings.catch_warnings():  # its old imports (pkg_resources, scipy.ndimage.interpolation) warn on every run
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("ignore", DeprecationWarning)  # and scipy.ndimage.interpolation
    import imagecorruptions  # noqa: E402
    from imagecorruptions import corruptions as _impl  # noqa: E402
import skimage as _skimage  # noqa: E402
from skimage.filters import gaussian as _gaussian  # noqa: E402


def _gaussian_compat(image, sigma=1, multichannel=None, **kwargs):
    # scikit-image 0.19 replaced `multichannel=True` by `channel_axis=-1` (glass and gaussian blur use it)
    if multichannel:
        kwargs["channel_axis"] = -1
    return _gaussian(image, sigma=sigma, **kwargs)


def _random_noise_seeded(image, **kwargs):
    # impulse_noise calls skimage's random_noise, which draws from its own unseeded generator:
    # seed it from NumPy's global one, which `corrupt` seeds
    return _skimage.util.random_noise(image, rng=np.random.randint(2**31), **kwargs)


_impl.gaussian = _gaussian_compat
_impl.sk = SimpleNamespace(color=_skimage.color, util=SimpleNamespace(random_noise=_random_noise_seeded))

CORRUPTIONS = tuple(imagecorruptions.get_corruption_names("all"))
NIGHT_GAIN = np.array([0.80, 0.90, 1.15])


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """`image` (uint8 HxWx3) with corruption `name` at `severity` 1..5, reproducible from `seed`."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if name == "night":
        return night(image, seed)
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected 'night' or one of {list(CORRUPTIONS)}")
    np.random.seed(seed)  # imagecorruptions draws from NumPy's global generator
    out = imagecorruptions.corrupt(image, corruption_name=name, severity=severity)
    return np.ascontiguousarray(out[: image.shape[0], : image.shape[1]]).astype(np.uint8)


def night(image: np.ndarray, seed: int) -> np.ndarray:
    """BENCHMARK.md's synthetic low light: gamma 2.2, gain 0.35, blue tint, sensor noise."""
    rgb = (image / 255.0) ** 2.2 * 0.35 * NIGHT_GAIN
    rgb += np.random.default_rng(seed).normal(0.0, 0.02, size=rgb.shape)
    return (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)
