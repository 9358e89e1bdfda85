"""data/metrics.py against confusion matrices and scores computed independently with NumPy."""
import numpy as np
import pytest
import torch

from driftseg.data.metrics import ConfusionMatrix, class_ious, mean_dice, mean_iou, per_class_iou


def np_confusion(target: np.ndarray, pred: np.ndarray, c: int, ignore: int) -> np.ndarray:
    mat = np.zeros((c, c), np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != ignore:
            mat[t, p] += 1
    return mat


def np_scores(mat: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-class IoU (0 where a class is absent), and mean IoU and Dice in percent over present classes."""
    c = len(mat)
    iou, dice, present = np.zeros(c), np.zeros(c), []
    for k in range(c):
        tp = mat[k, k]
        fp = mat[:, k].sum() - tp
        fn = mat[k, :].sum() - tp
        if tp + fp + fn:
            present.append(k)
            iou[k] = tp / (tp + fp + fn)
            dice[k] = 2 * tp / (2 * tp + fp + fn)
    if not present:
        return iou, 0.0, 0.0
    return iou, 100 * iou[present].mean(), 100 * dice[present].mean()


def random_maps(rng, shape, c, ignore, p_ignore=0.2, classes=None):
    classes = np.arange(c) if classes is None else np.asarray(classes)
    target = rng.choice(classes, size=shape).astype(np.uint8)
    target[rng.random(shape) < p_ignore] = ignore
    pred = rng.choice(classes, size=shape)
    agree = rng.random(shape) < 0.5  # make predictions better than chance
    pred[agree & (target != ignore)] = target[agree & (target != ignore)]
    return target, pred.astype(np.int64)


def test_hand_built_example() -> None:
    # 3 classes, ignore 255
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 1, 2]])
    cm = ConfusionMatrix(3, 255)
    cm.update(target, pred)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.mat, expected)
    # IoU: class0 1/(1+1+1)=1/3, class1 2/(2+1)=2/3, class2 1/(1+0+1)=1/2
    torch.testing.assert_close(per_class_iou(cm.mat), torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert cm.miou() == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    # Dice: 2/4, 4/5, 2/3
    assert cm.dice() == pytest.approx(100 * (2 / 4 + 4 / 5 + 2 / 3) / 3)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("c", "ignore"), [(4, 255), (6, 6), (11, 11)])
def test_random_maps_match_numpy(seed, c, ignore) -> None:
    rng = np.random.default_rng(seed)
    cm = ConfusionMatrix(c, ignore)
    total = np.zeros((c, c), np.int64)
    for _ in range(3):  # accumulates across updates
        target, pred = random_maps(rng, (2, 7, 9), c, ignore)
        cm.update(torch.from_numpy(target), torch.from_numpy(pred))
        total += np_confusion(target, pred, c, ignore)
    np.testing.assert_array_equal(cm.mat.numpy(), total)
    iou, miou, dice = np_scores(total)
    np.testing.assert_allclose(per_class_iou(cm.mat).numpy(), iou, rtol=1e-12)
    assert cm.miou() == pytest.approx(miou, rel=1e-9)
    assert mean_iou(cm.mat) == pytest.approx(miou, rel=1e-9)
    assert cm.dice() == pytest.approx(dice, rel=1e-9)
    assert mean_dice(cm.mat) == pytest.approx(dice, rel=1e-9)


def test_ignored_pixels_do_not_count_whatever_is_predicted() -> None:
    rng = np.random.default_rng(0)
    target, pred = random_maps(rng, (16, 16), 5, 255, p_ignore=0.4)
    a, b = ConfusionMatrix(5, 255), ConfusionMatrix(5, 255)
    a.update(torch.from_numpy(target), torch.from_numpy(pred))
    other = pred.copy()
    other[target == 255] = rng.integers(0, 5, (target == 255).sum())
    b.update(torch.from_numpy(target), torch.from_numpy(other))
    assert torch.equal(a.mat, b.mat)
    assert a.mat.sum().item() == (target != 255).sum()


def test_classes_absent_from_both_are_skipped() -> None:
    rng = np.random.default_rng(1)
    # 8 classes, but only 1, 3 and 4 occur in labels or predictions
    target, pred = random_maps(rng, (10, 12), 8, 255, classes=[1, 3, 4])
    cm = ConfusionMatrix(8, 255)
    cm.update(torch.from_numpy(target), torch.from_numpy(pred))
    mat = np_confusion(target, pred, 8, 255)
    sub = mat[np.ix_([1, 3, 4], [1, 3, 4])]
    _, miou3, dice3 = np_scores(sub)
    assert cm.miou() == pytest.approx(miou3)
    assert cm.dice() == pytest.approx(dice3)
    # the 5 absent classes are left out of the mean, not counted as IoU 0
    per_class = per_class_iou(cm.mat).numpy()
    assert per_class[[0, 2, 5, 6, 7]].tolist() == [0.0] * 5
    assert cm.miou() == pytest.approx(100 * per_class.sum() / 3)
    assert cm.miou() != pytest.approx(100 * per_class.mean())
    ious = class_ious(cm.mat)
    assert [k for k, v in enumerate(ious) if v is None] == [0, 2, 5, 6, 7]
    np.testing.assert_allclose([ious[k] for k in (1, 3, 4)], 100 * np_scores(sub)[0], rtol=1e-12)


def test_class_only_predicted_counts_as_zero() -> None:
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 is never in the labels: a pure false positive
    cm = ConfusionMatrix(4, 255)
    cm.update(target, pred)
    # IoU 0: 1/2, 1: 1, 2: 0; class 3 absent from both
    assert cm.miou() == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert cm.dice() == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)


def test_class_only_labelled_counts_as_zero() -> None:
    target = torch.tensor([0, 0, 3, 3])
    pred = torch.tensor([0, 0, 0, 0])
    cm = ConfusionMatrix(4, 255)
    cm.update(target, pred)
    assert cm.miou() == pytest.approx(100 * (0.5 + 0) / 2)


def test_perfect_prediction_and_dice_iou_relation() -> None:
    rng = np.random.default_rng(2)
    target, _ = random_maps(rng, (9, 9), 5, 255)
    pred = np.where(target == 255, 0, target).astype(np.int64)
    cm = ConfusionMatrix(5, 255)
    cm.update(torch.from_numpy(target), torch.from_numpy(pred))
    assert cm.miou() == pytest.approx(100.0) and cm.dice() == pytest.approx(100.0)
    # per class, Dice = 2 IoU / (1 + IoU)
    target, pred = random_maps(rng, (9, 9), 5, 255)
    cm = ConfusionMatrix(5, 255)
    cm.update(torch.from_numpy(target), torch.from_numpy(pred))
    iou = per_class_iou(cm.mat).numpy()
    assert cm.dice() == pytest.approx(100 * np.mean(2 * iou / (1 + iou)))


def test_empty_and_all_ignored() -> None:
    cm = ConfusionMatrix(3, 255)
    assert cm.miou() == 0.0 and cm.dice() == 0.0
    cm.update(torch.full((4, 4), 255, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.long))
    assert cm.mat.sum() == 0
    assert cm.miou() == 0.0 and cm.dice() == 0.0


def test_shape_mismatch_is_refused() -> None:
    cm = ConfusionMatrix(3, 255)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))


def test_reduce_without_distributed_is_a_no_op() -> None:
    cm = ConfusionMatrix(2, 255)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    before = cm.mat.clone()
    cm.reduce_from_all_processes()
    assert torch.equal(cm.mat, before)
