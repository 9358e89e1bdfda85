"""ClassMix (Olsson et al. 2021) as DACS uses it for domain adaptation (Tranheden et al. 2021): half
of the classes in each source crop, with their pixels and true labels, pasted onto a target crop
whose other pixels keep their pseudo-labels. The student sees every class with real labels, set in
target surroundings, and does not only learn from its own mistakes (on dusk it stops self-training's
drift; it does not by itself teach the small classes, experiments/results/uda-full.md).

torchvision's MixUp and CutMix mix whole-image class labels for classification; no library mixes
segmentation masks by class, so the few lines are here.
"""
import torch


def class_masks(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """bool [B, H, W]: per sample, the pixels of a random half (rounded up) of the classes its
    labels [B, H, W] hold; ignored pixels are never chosen. Draws from torch's global generator,
    which a resumed job restores."""
    masks = []
    for y in labels:
        classes = y.unique()
        classes = classes[classes != ignore_index]
        chosen = classes[torch.randperm(len(classes))[:(len(classes) + 1) // 2].to(classes.device)]
        masks.append(torch.isin(y, chosen))
    return torch.stack(masks)


def class_mix(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
              ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source frames [B, 3, H, W] with labels [B, H, W] pasted onto the target frames and
    pseudo-labels at the same index, class by class (class_masks): the mixed frames and labels."""
    mask = class_masks(ys, ignore_index)
    return torch.where(mask[:, None], xs, xt), torch.where(mask, ys, yt)
