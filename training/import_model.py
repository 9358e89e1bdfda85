"""`driftseg import`: bring your own trained segmentation network.

Reads a network's weights (a state dict, read with weights_only=True: no code in the file is run),
rebuilds the architecture it belongs to, measures on a folder of the user's in-domain frames (no
labels) what `fda` and `auto` need, and writes a driftseg checkpoint that `serve`, `segment`, `bench`
and `export onnx` take:

    driftseg import --arch smp:Unet:resnet18 --weights unet.pth --classes classes.json \\
        --input-size 192 256 --source-frames frames/ --out unet.pt

--arch: torchvision:NAME (torchvision.models.segmentation), smp:ARCH:ENCODER (the 'models' extra),
MODULE:FACTORY (MODULE.FACTORY(num_classes=C, **arch_kwargs) returns the network: serving such a
checkpoint needs DRIFTSEG_TRUSTED_MODULES=MODULE), or a registry name. The network takes images
normalised with --mean/--std and returns logits (a tensor, a dict with "out", or a tuple whose first
item they are). --classes: JSON {"names": [...], "palette": [[r, g, b], ...], "ignore_index": N}.
"""
import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from driftseg.adapters.ema_bn import NO_BN
from driftseg.data.folder import IMAGE_SUFFIXES, list_images
from driftseg.data.transforms import pixels, to_unit
from driftseg.models.batchnorm import adaptable_norms, foldable_pairs, other_norms
from driftseg.models.checkpoint import Checkpoint, check_weights_fit, compact_weights, git_commit, load_checkpoint, \
    load_plain, save_checkpoint
from driftseg.models.registry import SegmentationNet, create_model, factory_module, list_architectures, trust_module
from driftseg.training.calibrate import shift_calibration
from driftseg.training.common import AMPLITUDE_BETA, mean_amplitude

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CALIBRATION_MOMENTUM = 0.1  # the EMA momentum floor auto runs with
LIBRARIES = ("torch", "torchvision", "segmentation-models-pytorch", "timm")


def read_classes(path: Path) -> tuple[list[str], list[list[int]], int | None]:
    """Class names, palette (generated where the file has none) and ignore index from a JSON file."""
    try:
        meta = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--classes {path} is not JSON: {e}") from None
    if isinstance(meta, list):
        meta = {"names": meta}
    names = meta.get("names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f'--classes {path} should hold {{"names": [...], "palette": [[r, g, b], ...], '
                         f'"ignore_index": N}} with at least one class name')
    palette = meta.get("palette") or default_palette(len(names))
    if len(palette) != len(names) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette):
        raise ValueError(f"--classes {path}: palette should be {len(names)} [r, g, b] triples of 0..255, one per class")
    ignore = meta.get("ignore_index")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int)):
        raise ValueError(f"--classes {path}: ignore_index should be an int, got {ignore!r}")
    return list(names), [list(c) for c in palette], ignore


def default_palette(n: int) -> list[list[int]]:
    """Distinct colours, PASCAL VOC's bit-interleaving scheme."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `path`, read without running code (weights_only). A training checkpoint that
    holds one under "state_dict", "model_state_dict" or "model" is unwrapped, and DDP's "module." prefix
    taken off."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--weights {path} does not exist")
    state = load_plain(path, f"--weights {path} is not a state dict; save the network's weights with "
                             "torch.save(model.state_dict(), path)")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {path} is not a state dict (names -> tensors); save the network's weights "
                         "with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def list_frames(folder: Path, limit: int | None) -> list[Path]:
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--source-frames {folder} is not a folder of images")
    paths = list_images(folder)
    if len(paths) < 3:
        raise ValueError(f"--source-frames {folder} holds {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}); the "
                         "source statistics need at least 3 in-domain frames, a few dozen to be useful")
    if limit is not None and len(paths) > limit:  # spread over the folder, not its first frames
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def read_frames(paths: list[Path], size: list[int]) -> torch.Tensor:
    """uint8 [N, 3, H, W] at the network's input size."""
    frames = []
    for path in paths:
        with Image.open(path) as im:
            frames.append(TF.resize(pixels(np.array(im.convert("RGB"))), size, antialias=True))
    return torch.stack(frames)


def build(arch: str, num_classes: int, mean, std, arch_kwargs: dict, weights: dict[str, torch.Tensor],
          weights_file: Path) -> tuple[SegmentationNet, dict]:
    """The network with the user's weights, in eval mode, and the arch_kwargs it was built with."""
    if factory_module(arch):
        trust_module(factory_module(arch))  # the user named this code on the command line
    kwargs = dict(arch_kwargs)
    # torchvision networks trained with aux_loss carry an auxiliary head: build it, so the weights fit
    torchvision = arch in list_architectures() or arch.startswith("torchvision:")
    if torchvision and "aux_loss" not in kwargs and any(k.startswith("aux_classifier.") for k in weights):
        kwargs["aux_loss"] = True
    model = create_model(arch, num_classes, mean, std, **kwargs)
    try:
        check_weights_fit(model.net, weights, arch, what=f"the weights in {weights_file}")
    except ValueError as e:
        hint = "" if "wrong shape []" in str(e) else \
            " (does --classes name as many classes as the network's last layer has outputs?)"
        raise ValueError(f"{e}{hint}") from None
    model.net.load_state_dict(weights)
    return model.float().eval(), kwargs


@torch.no_grad()
def check_forward(model: SegmentationNet, size: list[int], num_classes: int, arch: str) -> list[str]:
    """One frame through the network: it takes the input size and returns C-channel logits. The BN
    layers it never reached (parts of the network its forward does not use), by name."""
    names, reached = adaptable_norms(model), set()
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: reached.add(n)) for n in names]
    try:
        out = model(torch.zeros(1, 3, *size))
    except Exception as e:  # the user's network: any error is its own
        raise ValueError(f"{arch} cannot take frames of --input-size {size[0]} {size[1]}: {e}") from None
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[:2] != (1, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{arch} should return logits [1, {num_classes}, h, w] for one frame ({num_classes} "
                         f"classes in --classes), got {got}")
    return [n for n in names if n not in reached]


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg import", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="torchvision:NAME | smp:ARCH:ENCODER | MODULE:FACTORY | a registry name")
    p.add_argument("--arch-kwargs", type=json.loads, default={}, metavar="JSON",
                   help='more arguments of the builder, e.g. \'{"decoder_channels": [128, 64, 32, 16, 8]}\'')
    p.add_argument("--weights", type=Path, required=True, help="the network's state dict (torch.save)")
    p.add_argument("--classes", type=Path, required=True, help='JSON {"names", "palette", "ignore_index"}')
    p.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("H", "W"),
                   help="the frame size the network runs at (frames of any size are resized to it)")
    p.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN, help="of RGB in [0, 1] (default ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    p.add_argument("--source-frames", type=Path, required=True,
                   help="a folder of in-domain images (no labels): the FDA source band and auto's shift calibration")
    p.add_argument("--max-frames", type=int, default=200, help="source frames read at most, spread over the folder")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    args = p.parse_args(argv)
    if not isinstance(args.arch_kwargs, dict):
        p.error("--arch-kwargs must be a JSON object")
    if min(args.input_size) < 8:
        p.error("--input-size must be at least 8 x 8")

    names, palette, ignore = read_classes(args.classes)
    weights = read_weights(args.weights)
    size = list(args.input_size)
    model, arch_kwargs = build(args.arch, len(names), args.mean, args.std, args.arch_kwargs, weights, args.weights)
    unreached = check_forward(model, size, len(names), args.arch)

    paths = list_frames(args.source_frames, args.max_frames)
    frames = read_frames(paths, size)
    config = {"job": "import", "arch": args.arch, "arch_kwargs": arch_kwargs, "weights": str(args.weights),
              "weights_keys": len(weights), "libraries": library_versions()}
    data = {"source_frames": str(args.source_frames), "frames": len(paths), "ignore_index": ignore}
    ckpt = Checkpoint(
        arch=args.arch, arch_kwargs=arch_kwargs, class_names=names, palette=palette, mean=list(args.mean),
        std=list(args.std), input_size=size, weights=compact_weights(model.state_dict()),
        source_amplitude=mean_amplitude(frames), source_amplitude_beta=AMPLITUDE_BETA, config=config, data=data,
        git_commit=git_commit(), extra={})
    notes = []
    bn = adaptable_norms(model)
    if bn:
        cal = shift_calibration(ckpt, (to_unit(f[None]) for f in frames), CALIBRATION_MOMENTUM,
                                f"source-frames:{args.source_frames}")
        ckpt.extra["shift"] = cal.to_dict()
        notes.append(f"{len(bn)} BN layers to adapt, {len(foldable_pairs(model))} foldable into their convolutions; "
                     f"shift calibrated on {cal.frames} frames (tau median {cal.tau.median():.3g})")
    else:
        notes.append(f"warning: {NO_BN}")
    if unreached:
        notes.append(f"{len(unreached)} BN layers never run in the network's forward (unused parts of it, "
                     f"e.g. {unreached[0]}): they stay at the source statistics")
    if other_norms(model):
        left = other_norms(model)
        notes.append(f"{len(left)} BatchNorm subclass layers are not adapted (kept as the network has them): {left[:3]}")

    save_checkpoint(ckpt, args.out)
    load_checkpoint(args.out)  # what serve will do: the file must read back
    print(f"imported {args.arch} ({len(names)} classes, input {size[0]}x{size[1]}) from {args.weights}: "
          f"{'; '.join(notes)}; source amplitude band from {len(paths)} frames; wrote {args.out}")
    module = factory_module(args.arch)
    trust = f"DRIFTSEG_TRUSTED_MODULES={module} " if module else ""
    method = "" if bn else " --method source+lc"
    print(f"serve it:  {trust}driftseg serve --checkpoint {args.out}{method}", file=sys.stderr)
