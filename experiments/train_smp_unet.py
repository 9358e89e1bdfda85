"""A user's own training loop, not driftseg's: a segmentation_models_pytorch U-Net (ResNet-18
encoder, from scratch, a slim decoder) trained briefly on CamVid's labelled day frames at a small
input size, the way anyone might train a network before bringing it to driftseg (README, "Bring your
own model"). Frames are resized to --size, the network trains on random --crop crops of them and is
evaluated on whole frames; it stops after --iters iterations or --cpu-minutes of processor time.

    python experiments/train_smp_unet.py --data ../shared/data/camvid --out runs/unet

writes OUT/unet.pth (the state dict), OUT/classes.json (names, palette, ignore index) and
OUT/source-frames/ (links to the in-domain validation frames, no labels), what `driftseg import`
takes. Needs only torch, segmentation-models-pytorch and Pillow; a few minutes on two CPU cores.
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from torch.nn import functional as F

CLASSES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"]
PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
           [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
VOID = 11
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load(data: Path, names: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames uint8 [N, 3, H, W] and labels int64 [N, H, W] resized to `size`."""
    images, labels = [], []
    for name in names:
        with Image.open(data / "images" / f"{name}.jpg") as im:
            images.append(np.array(im.convert("RGB").resize(size[::-1], Image.BILINEAR)))
        with Image.open(data / "labels" / f"{name}.png") as im:
            labels.append(np.array(im.resize(size[::-1], Image.NEAREST)))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), torch.from_numpy(np.stack(labels)).long()


def batch(images, labels, n: int, crop: tuple[int, int], g: torch.Generator):
    """n random crops, half of them flipped, normalised."""
    idx = torch.randint(len(images), (n,), generator=g)
    h, w = images.shape[-2:]
    y, x = (torch.randint(h - crop[0] + 1, (1,), generator=g).item(), torch.randint(w - crop[1] + 1, (1,), generator=g).item())
    xs = images[idx, :, y:y + crop[0], x:x + crop[1]].float().div(255)
    ys = labels[idx, y:y + crop[0], x:x + crop[1]]
    if torch.rand(1, generator=g).item() < 0.5:
        xs, ys = xs.flip(-1), ys.flip(-1)
    return (xs - MEAN) / STD, ys


@torch.no_grad()
def miou(model, images, labels) -> float:
    model.eval()
    cm = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    for i in range(0, len(images), 16):
        pred = model((images[i:i + 16].float().div(255) - MEAN) / STD).argmax(1)
        y = labels[i:i + 16]
        keep = y != VOID
        cm += torch.bincount(y[keep] * len(CLASSES) + pred[keep], minlength=len(CLASSES) ** 2).view(len(CLASSES), -1)
    model.train()
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag()).clamp_min(1)
    return 100 * iou[cm.sum(1) > 0].mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/camvid"))
    p.add_argument("--out", type=Path, default=Path("runs/unet"))
    p.add_argument("--size", type=int, nargs=2, default=[192, 256], help="input size H W (multiples of 32)")
    p.add_argument("--crop", type=int, nargs=2, default=[96, 128], help="training crop H W (multiples of 32)")
    p.add_argument("--decoder-channels", type=int, nargs=5, default=[64, 32, 16, 16, 8])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--cpu-minutes", type=float, default=10.0, help="stop earlier after this much processor time")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    splits = json.loads((args.data / "splits.json").read_text())
    size, crop = tuple(args.size), tuple(args.crop)
    train = load(args.data, splits["source_train"], size)
    val = load(args.data, splits["source_val"], size)

    model = smp.Unet("resnet18", encoder_weights=None, decoder_channels=args.decoder_channels, classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    start, cpu0, budget = time.time(), time.process_time(), 60 * args.cpu_minutes
    it = 0
    while it < args.iters and time.process_time() - cpu0 < budget:
        it += 1
        done = max(it / args.iters, (time.process_time() - cpu0) / budget)  # warm up, then cosine to 0
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, 20 * done) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        x, y = batch(*train, args.batch, crop, g)
        loss = F.cross_entropy(model(x), y, ignore_index=VOID)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 25 == 0:
            print(f"iter {it} loss {loss.item():.3f} cpu {time.process_time() - cpu0:.0f} s wall {time.time() - start:.0f} s",
                  flush=True)
    score = miou(model, *val)
    print(f"{it} iterations; source_val mIoU {score:.1f} at {size[0]}x{size[1]}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "unet.pth")
    (args.out / "classes.json").write_text(json.dumps({"names": CLASSES, "palette": PALETTE, "ignore_index": VOID}))
    frames = args.out / "source-frames"
    frames.mkdir(exist_ok=True)
    for name in splits["source_val"]:  # links, not copies: the data stays where it is
        link = frames / f"{name}.jpg"
        if not link.exists():
            link.symlink_to((args.data / "images" / f"{name}.jpg").resolve())
    (args.out / "train.json").write_text(json.dumps({**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                                     "iterations": it, "source_val_miou": round(score, 2),
                                                     "cpu_seconds": round(time.process_time() - cpu0),
                                                     "seconds": round(time.time() - start)}))
    print(f"wrote {args.out / 'unet.pth'}, {args.out / 'classes.json'}, {frames}/")


if __name__ == "__main__":
    main()
