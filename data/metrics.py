"""Segmentation scores from one confusion matrix accumulated over a whole stream."""
import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Rows are true classes, columns predicted ones; pixels labelled `ignore_index` are skipped."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        if target.shape != pred.shape:
            raise ValueError(f"target {tuple(target.shape)} and prediction {tuple(pred.shape)} differ in shape")
        keep = target != self.ignore_index
        for name, ids in (("target", target[keep]), ("prediction", pred[keep])):
            if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_classes):
                raise ValueError(f"{name} class ids should lie in [0, {self.num_classes}) or be "
                                 f"{self.ignore_index} (ignored), got {ids.min().item()}..{ids.max().item()}")
        idx = target[keep].long() * self.num_classes + pred[keep].long()
        counts = torch.bincount(idx, minlength=self.num_classes**2)
        self.mat += counts.reshape(self.num_classes, self.num_classes).cpu()

    def reduce_from_all_processes(self) -> None:
        if dist.is_available() and dist.is_initialized():
            mat = self.mat.to("cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(mat)
            self.mat = mat.cpu()

    def miou(self) -> float:
        return mean_iou(self.mat)

    def dice(self) -> float:
        return mean_dice(self.mat)


def _present(mat: torch.Tensor) -> torch.Tensor:
    # classes absent from both labels and predictions say nothing about the model: skip them
    return (mat.sum(0) + mat.sum(1)) > 0


def per_class_iou(mat: torch.Tensor) -> torch.Tensor:
    mat = mat.double()
    tp = mat.diag()
    union = mat.sum(0) + mat.sum(1) - tp
    return tp / union.clamp_min(1)


def class_ious(mat: torch.Tensor) -> list[float | None]:
    """Each class's IoU in percent; None for a class absent from labels and predictions."""
    return [100.0 * v if present else None for v, present in zip(per_class_iou(mat).tolist(), _present(mat).tolist())]


def mean_iou(mat: torch.Tensor) -> float:
    """Mean IoU in percent over the classes present in labels or predictions."""
    present = _present(mat)
    return 100.0 * per_class_iou(mat)[present].mean().item() if present.any() else 0.0


def mean_dice(mat: torch.Tensor) -> float:
    """Mean Dice (2TP / (2TP + FP + FN)) in percent over the same classes as mean_iou."""
    present = _present(mat)
    if not present.any():
        return 0.0
    mat = mat.double()
    tp = mat.diag()
    dice = 2 * tp / (mat.sum(0) + mat.sum(1)).clamp_min(1)
    return 100.0 * dice[present].mean().item()
