"""Synthetic shifts: the `imagecorruptions` package (Michaelis et al. 2019) and the protocol's night.

imagecorruptions (the `bench` extra; it pulls in scikit-image, SciPy and OpenCV) is imported the
first time a frame is corrupted with it, not with this module: the serving image and the training
jobs import driftseg.data without it. imagecorruptions 1.1.2 predates NumPy 2 and scikit-image
0.19; the shims below let it run on current releases without pinning old ones, and make every
corruption reproducible from one seed.
"""
import functools
import warnings
from types import ModuleType, SimpleNamespace

import numpy as np

# imagecorruptions.get_corruption_names("all") of the pinned 1.1.2 (tests/data/test_streams.py
# checks the two agree), here so that stream specs are checked without importing it
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
NIGHT_GAIN = np.array([0.80, 0.90, 1.15])


@functools.cache
def imagecorruptions() -> ModuleType:
    """The imagecorruptions package, imported and shimmed once."""
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # removed in NumPy 2; imagecorruptions still references it
    try:
        with warnings.catch_warnings():  # its old imports (pkg_resources, scipy.ndimage.interpolation) warn on every run
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions as package
            from imagecorruptions import corruptions as impl
        import skimage
        from skimage.filters import gaussian
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"corrupting frames needs imagecorruptions ({e}): "
                                  "pip install 'driftseg[bench]'", name=e.name) from e

    def gaussian_compat(image, sigma=1, multichannel=None, **kwargs):
        # scikit-image 0.19 replaced `multichannel=True` by `channel_axis=-1` (glass and gaussian blur use it)
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, sigma=sigma, **kwargs)

    def random_noise_seeded(image, **kwargs):
        # impulse_noise calls skimage's random_noise, which draws from its own unseeded generator:
        # seed it from NumPy's global one, which `corrupt` seeds
        return skimage.util.random_noise(image, rng=np.random.randint(2**31), **kwargs)

    impl.gaussian = gaussian_compat
    impl.sk = SimpleNamespace(color=skimage.color, util=SimpleNamespace(random_noise=random_noise_seeded))
    return package


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """`image` (uint8 HxWx3) with corruption `name` at `severity` 1..5, reproducible from `seed`."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if name == "night":
        return night(image, seed)
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected 'night' or one of {list(CORRUPTIONS)}")
    package = imagecorruptions()
    np.random.seed(seed)  # imagecorruptions draws from NumPy's global generator
    out = package.corrupt(image, corruption_name=name, severity=severity)
    return np.ascontiguousarray(out[: image.shape[0], : image.shape[1]]).astype(np.uint8)


def night(image: np.ndarray, seed: int) -> np.ndarray:
    """BENCHMARK.md's synthetic low light: gamma 2.2, gain 0.35, blue tint, sensor noise."""
    rgb = (image / 255.0) ** 2.2 * 0.35 * NIGHT_GAIN
    rgb += np.random.default_rng(seed).normal(0.0, 0.02, size=rgb.shape)
    return (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)
