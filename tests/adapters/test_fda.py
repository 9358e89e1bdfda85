import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driftseg.adapters.fda import (
    FDAState,
    band_size,
    center_crop_band,
    low_freq_amplitude,
    transfer,
    transfer_unclamped,
    update_recent,
)


def _images(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Images well inside (0, 1), so small band changes never reach the clamp."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(b, 3, h, w, generator=g)


def _numpy_band(images: np.ndarray, b: int) -> np.ndarray:
    """Band from the four corners of the unshifted spectrum, as in the official code."""
    amp = np.abs(np.fft.fft2(images, axes=(-2, -1)))
    top = np.concatenate([amp[..., -b:, -b:], amp[..., -b:, :b]], axis=-1)
    bottom = np.concatenate([amp[..., :b, -b:], amp[..., :b, :b]], axis=-1)
    return np.concatenate([top, bottom], axis=-2)


def _spectrum(x: torch.Tensor) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(x.double().numpy(), axes=(-2, -1)), axes=(-2, -1))


shapes = st.tuples(st.integers(2, 9), st.integers(2, 9))
seeds = st.integers(0, 2**16)


def test_band_size_follows_official_floor() -> None:
    assert band_size(512, 1024, 0.01) == 5
    assert band_size(7, 9, 0.3) == 2
    assert band_size(8, 8, 0.0) == 0
    with pytest.raises(ValueError, match="beta"):
        band_size(8, 8, 0.6)


@pytest.mark.parametrize(("h", "w", "b"), [(8, 8, 2), (7, 9, 3), (6, 11, 1), (4, 6, 2)])
def test_band_matches_numpy_corners(h: int, w: int, b: int) -> None:
    x = _images(2, h, w, seed=0)
    expected = _numpy_band(x.double().numpy(), b)
    np.testing.assert_allclose(low_freq_amplitude(x, b).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_center_crop_band_keeps_the_same_frequencies() -> None:
    x = _images(1, 12, 12, seed=1)
    wide = low_freq_amplitude(x, 4)[0]
    torch.testing.assert_close(center_crop_band(wide, 2), low_freq_amplitude(x, 2)[0])
    with pytest.raises(ValueError, match=r"\[\.\.\., 2b', 2b'\]"):
        center_crop_band(torch.zeros(3, 5, 5), 1)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=seeds, mode=st.sampled_from(["swap", "ratio"]))
def test_beta_zero_is_identity(shape: tuple[int, int], seed: int, mode: str) -> None:
    x = _images(2, *shape, seed)
    b = band_size(*shape, 0.0)
    assert torch.equal(transfer(x, torch.ones(3, 4, 4), b, mode, torch.ones(2, 3, 0, 0)), x)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=seeds, beta=st.floats(0.1, 0.5))
def test_swap_with_own_band_is_identity(shape: tuple[int, int], seed: int, beta: float) -> None:
    x = _images(1, *shape, seed)
    b = band_size(*shape, beta)
    out = transfer(x, low_freq_amplitude(x, b)[0], b, mode="swap")
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=seeds, beta=st.floats(0.1, 0.5))
def test_ratio_with_recent_equal_source_is_identity(shape: tuple[int, int], seed: int, beta: float) -> None:
    x = _images(2, *shape, seed)
    b = band_size(*shape, beta)
    source = low_freq_amplitude(_images(4, *shape, seed + 1), b).mean(0)
    recent = source.expand(2, -1, -1, -1)
    out = transfer(x, source, b, mode="ratio", recent_band=recent)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["swap", "ratio"])
@pytest.mark.parametrize(("h", "w", "beta"), [(8, 8, 0.25), (9, 7, 0.3), (8, 8, 0.5)])
def test_phase_is_kept_inside_the_band(mode: str, h: int, w: int, beta: float) -> None:
    x = _images(2, h, w, seed=2)
    b = band_size(h, w, beta)
    # A moderately different source: other images, slightly darker.
    source = 0.9 * low_freq_amplitude(_images(3, h, w, seed=3), b).mean(0)
    recent = low_freq_amplitude(_images(3, h, w, seed=4), b).mean(0).expand(2, -1, -1, -1)
    out = transfer_unclamped(x, source, b, mode, recent)

    rows, cols = slice(h // 2 - b, h // 2 + b), slice(w // 2 - b, w // 2 + b)
    f_in, f_out = _spectrum(x)[..., rows, cols], _spectrum(out)[..., rows, cols]
    solid = (np.abs(f_in) > 1e-3) & (np.abs(f_out) > 1e-3)
    assert solid.mean() > 0.9
    drift = np.abs(np.exp(1j * np.angle(f_out)) - np.exp(1j * np.angle(f_in)))
    assert drift[solid].max() < 1e-4
    # The test images stay clear of the clamp, so transfer() agrees with the helper.
    torch.testing.assert_close(transfer(x, source, b, mode, recent), out)


@pytest.mark.parametrize(("h", "w", "beta"), [(10, 10, 0.3), (9, 12, 0.25), (8, 8, 0.5)])
def test_swap_band_amplitude_equals_source(h: int, w: int, beta: float) -> None:
    x = _images(2, h, w, seed=5)
    b = band_size(h, w, beta)
    source = low_freq_amplitude(_images(3, h, w, seed=6), b).mean(0)
    out_band = low_freq_amplitude(transfer_unclamped(x, source, b, mode="swap"), b)
    expected = source.expand_as(out_band)
    if 2 * b < min(h, w):
        # Row/col 0 of the band (frequency -b) has its mirror +b outside the band, so
        # taking the real part averages it with an untouched amplitude; the rest of
        # the band is closed under k -> -k and must match exactly.
        out_band, expected = out_band[..., 1:, 1:], expected[..., 1:, 1:]
    torch.testing.assert_close(out_band, expected, rtol=1e-4, atol=1e-4)


def test_swap_with_one_band_per_image_gives_each_image_its_own() -> None:
    x = _images(2, 10, 12, seed=9)
    bands = low_freq_amplitude(_images(2, 10, 12, seed=10), 2)
    out_band = low_freq_amplitude(transfer_unclamped(x, bands, 2, mode="swap"), 2)
    torch.testing.assert_close(out_band[..., 1:, 1:], bands[..., 1:, 1:], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"one per image\), got \[3, 3, 4, 4\] for 2 images"):
        transfer(x, torch.cat([bands, bands[:1]]), 2, mode="swap")


def test_transfer_clamps_and_keeps_dtype() -> None:
    x = _images(1, 8, 8, seed=7)
    source = 5.0 * low_freq_amplitude(x, 2)[0]  # far too bright: forces clamping
    out = transfer(x.half(), source, 2, mode="swap")
    assert out.dtype == torch.float16
    assert out.min() >= 0 and out.max() <= 1


def test_transfer_rejects_bad_arguments() -> None:
    x = _images(2, 8, 8, seed=8)
    source = low_freq_amplitude(x, 2)[0]
    with pytest.raises(ValueError, match="swap"):
        transfer(x, source, 2, mode="replace")
    with pytest.raises(ValueError, match=r"recent_band"):
        transfer(x, source, 2, mode="ratio")
    with pytest.raises(ValueError, match=r"\[B, 3, 2b, 2b\]"):
        transfer(x, source, 2, mode="ratio", recent_band=source)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        transfer(x[:, :2], source, 2)
    with pytest.raises(ValueError, match=r"min\(H, W\) // 2"):
        transfer(x, source, 5)
    with pytest.raises(ValueError, match="for a band of size 4"):
        transfer(x, source, 3, mode="swap")


def test_update_recent_matches_numpy_ema() -> None:
    g = torch.Generator().manual_seed(9)
    recent, frame = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    expected = 0.8 * recent.double().numpy() + 0.2 * frame.double().numpy()
    np.testing.assert_allclose(update_recent(recent, frame, 0.2).numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        update_recent(recent, frame[:1], 0.2)
    with pytest.raises(ValueError, match="momentum"):
        update_recent(recent, frame, 1.5)


def test_state_round_trip_and_reset() -> None:
    source = low_freq_amplitude(_images(3, 8, 8, seed=10), 2).mean(0)
    state = FDAState.initial(source)
    assert torch.equal(state.recent_band, source) and state.frames == 0

    frame = low_freq_amplitude(_images(1, 8, 8, seed=11), 2)
    state.recent_band = update_recent(state.recent_band[None], frame, 0.1)[0]
    state.frames += 1
    other = FDAState.initial(source)
    other.load_state_dict(state.state_dict())
    assert torch.equal(other.recent_band, state.recent_band) and other.frames == 1

    state.reset()
    assert torch.equal(state.recent_band, source) and state.frames == 0
    with pytest.raises(ValueError, match=r"\[3, 4, 4\]"):
        other.load_state_dict({"recent_band": torch.zeros(3, 6, 6), "frames": 1})
    with pytest.raises(ValueError, match="frames"):
        other.load_state_dict({"recent_band": source, "frames": -1})
    with pytest.raises(ValueError, match=r"\[3, 2b, 2b\]"):
        FDAState.initial(torch.zeros(3, 4, 5))
