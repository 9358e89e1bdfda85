import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from driftseg.adapters.label_calibration import LabelCalibrationState, calibrate


def _random_probs(b: int, c: int, h: int, w: int, seed: int, never: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(b, c, h, w, generator=g)
    if never is not None:
        logits[:, never] -= 20.0  # class `never` is never the argmax
    return logits.softmax(dim=1)


def _numpy_reference(frames: list[np.ndarray], c: int, forget: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's sums, pixel by pixel: frames are [C, H, W] probability maps."""
    sums = np.zeros((c, c))
    weight = np.zeros(c)
    for p in frames:
        sums *= forget
        weight *= forget
        for pixel in p.reshape(c, -1).T:
            k = int(np.argmax(pixel))
            sums[k] += pixel[k] * pixel
            weight[k] += pixel[k]
    return sums, weight


def _numpy_prototypes(sums: np.ndarray, weight: np.ndarray) -> np.ndarray:
    c = weight.shape[0]
    return np.stack([sums[k] / weight[k] if weight[k] > 0 else np.eye(c)[k] for k in range(c)])


def _numpy_nearest(p: np.ndarray, protos: np.ndarray) -> np.ndarray:
    c = p.shape[0]
    pixels = p.reshape(c, -1).T  # [N, C]
    d = ((pixels[:, None, :] - protos[None, :, :]) ** 2).sum(-1)  # [N, C]
    return d.argmin(1).reshape(p.shape[1:])


def _run(frames: torch.Tensor, forget: float) -> tuple[list[torch.Tensor], LabelCalibrationState]:
    """Feed frames [T, C, H, W] to one stream; returns per-frame labels and the state."""
    state = LabelCalibrationState.initial(frames.shape[1])
    labels = []
    for frame in frames:
        lab, s, w = calibrate(frame[None], state.proto_sum[None], state.weight[None], forget)
        state.proto_sum, state.weight = s[0], w[0]
        labels.append(lab[0])
    return labels, state


@pytest.mark.parametrize("forget", [1.0, 0.7])
def test_prototypes_and_labels_match_numpy_loop(forget: float) -> None:
    c = 4
    frames = _random_probs(3, c, 4, 5, seed=0, never=c - 1)
    labels, state = _run(frames, forget)

    np_frames = [f.double().numpy() for f in frames]
    for t in range(len(np_frames)):
        sums, weight = _numpy_reference(np_frames[: t + 1], c, forget)
        protos = _numpy_prototypes(sums, weight)
        np.testing.assert_array_equal(labels[t].numpy(), _numpy_nearest(np_frames[t], protos))
    np.testing.assert_allclose(state.proto_sum.numpy(), sums, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.weight.numpy(), weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.prototypes().numpy(), protos, rtol=1e-5, atol=1e-6)
    # The never-predicted class keeps its one-hot prototype.
    assert state.weight[c - 1] == 0
    np.testing.assert_array_equal(state.prototypes()[c - 1].numpy(), np.eye(c)[c - 1])


def test_initial_prototypes_are_one_hot() -> None:
    state = LabelCalibrationState.initial(5)
    assert torch.equal(state.prototypes(), torch.eye(5))


@settings(max_examples=25, deadline=None)
@given(
    c=st.integers(2, 5),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    forget=st.sampled_from([1.0, 0.5]),
)
def test_batched_equals_separate_streams(c: int, h: int, w: int, seed: int, forget: float) -> None:
    g = torch.Generator().manual_seed(seed)
    prev_sum = torch.rand(2, c, c, generator=g)
    prev_weight = torch.rand(2, c, generator=g) * (torch.rand(2, c, generator=g) > 0.3)
    probs = _random_probs(2, c, h, w, seed)

    labels, s, wt = calibrate(probs, prev_sum, prev_weight, forget)
    for i in range(2):
        li, si, wi = calibrate(probs[i : i + 1], prev_sum[i : i + 1], prev_weight[i : i + 1], forget)
        assert torch.equal(labels[i : i + 1], li)
        torch.testing.assert_close(s[i : i + 1], si)
        torch.testing.assert_close(wt[i : i + 1], wi)


def test_inputs_not_modified_and_half_sums_in_float32() -> None:
    probs = _random_probs(1, 3, 4, 4, seed=1)
    s0, w0 = torch.rand(1, 3, 3), torch.rand(1, 3)
    s_copy, w_copy = s0.clone(), w0.clone()
    labels, s, w = calibrate(probs.half(), s0, w0, forget=0.9)
    assert torch.equal(s0, s_copy) and torch.equal(w0, w_copy)
    assert labels.dtype == torch.int64 and labels.shape == (1, 4, 4)
    assert s.dtype == torch.float32 and w.dtype == torch.float32


def test_calibration_changes_an_ambiguous_label() -> None:
    # Class 0 is always predicted with low confidence (0.55, 0.45); class 1 confidently.
    # A pixel at (0.45, 0.55) is argmax 1 but far closer to class 0's prototype.
    pixels = [[0.55, 0.45]] * 8 + [[0.05, 0.95]] * 7 + [[0.45, 0.55]]
    probs = torch.tensor(pixels).T.reshape(1, 2, 4, 4)
    labels, _, _ = calibrate(probs, torch.zeros(1, 2, 2), torch.zeros(1, 2))
    expected = torch.tensor([0] * 8 + [1] * 7 + [0]).reshape(1, 4, 4)
    assert probs.argmax(1)[0, 3, 3] == 1
    assert torch.equal(labels, expected)


def test_confident_one_hot_predictions_are_kept() -> None:
    target = torch.tensor([[0, 1, 2], [2, 2, 0]])
    probs = torch.nn.functional.one_hot(target, 4).permute(2, 0, 1)[None].float()
    labels, s, w = calibrate(probs, torch.zeros(1, 4, 4), torch.zeros(1, 4))
    assert torch.equal(labels[0], target)
    # Class 3 was never predicted, so it has no weight and stays one-hot.
    assert torch.equal(w[0], torch.tensor([2.0, 1.0, 3.0, 0.0]))


def test_state_dict_round_trip_and_reset() -> None:
    _, state = _run(_random_probs(2, 3, 3, 3, seed=2), forget=0.8)
    saved = state.state_dict()
    other = LabelCalibrationState.initial(3)
    other.load_state_dict(saved)
    assert torch.equal(other.proto_sum, state.proto_sum)
    assert torch.equal(other.weight, state.weight)

    state.reset()
    assert torch.equal(state.prototypes(), torch.eye(3))
    assert saved["weight"].sum() > 0  # the snapshot survives the reset


@pytest.mark.parametrize(
    "bad",
    [
        {"proto_sum": torch.zeros(4, 4), "weight": torch.zeros(4)},
        {"proto_sum": torch.zeros(3, 3), "weight": torch.zeros(3, 1)},
        {"proto_sum": torch.zeros(3, 3)},
    ],
)
def test_load_state_dict_rejects_wrong_shapes(bad: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError):
        LabelCalibrationState.initial(3).load_state_dict(bad)


def test_calibrate_rejects_bad_arguments() -> None:
    probs = _random_probs(2, 3, 2, 2, seed=3)
    with pytest.raises(ValueError, match=r"\[B, C, C\]"):
        calibrate(probs, torch.zeros(1, 3, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        calibrate(probs, torch.zeros(2, 3, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="forget"):
        calibrate(probs, torch.zeros(2, 3, 3), torch.zeros(2, 3), forget=0.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        calibrate(probs[0], torch.zeros(2, 3, 3), torch.zeros(2, 3))
