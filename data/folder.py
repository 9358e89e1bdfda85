"""Read a labelled frame folder in the CamVid layout: images/*.jpg, labels/*.png, splits.json.

Any folder in that layout works; class names and colours come from the folder's optional
classes.json ({"names": [...], "palette": [[r, g, b], ...], "ignore_index": 11}) or default to
CamVid's 11 classes.
"""
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "camvid"

CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "sidewalk", "tree",
    "sign", "fence", "car", "pedestrian", "bicyclist",
]
CAMVID_PALETTE = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# `name[start:stop]`: a contiguous part of a split, e.g. one half of a sequence to train on, the other to score
SPLIT_SLICE = re.compile(r"(?P<name>[^\[\]]+)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]")


class UnknownSplit(KeyError, ValueError):
    """A split the folder does not have: a KeyError (a lookup that failed) and a ValueError (a bad
    argument), whose str() is its message, not the message in quotes as a KeyError's is."""

    def __str__(self) -> str:
        return str(self.args[0])


def whole_split(split: str) -> str:
    """The split that `split` names or slices: `target_dusk[31:]` -> `target_dusk`."""
    part = SPLIT_SLICE.fullmatch(split)
    return part["name"] if part else split


def list_images(folder: str | Path) -> list[Path]:
    """The images of a plain folder (no labels, no splits), in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_data_dir(data: str | Path | None = None) -> Path:
    """`data`, else $DRIFTSEG_DATA, else ../shared/data/camvid beside the repository."""
    chosen = data or os.environ.get("DRIFTSEG_DATA")
    if chosen:
        return Path(chosen).expanduser().resolve()
    if DEFAULT_DATA.is_dir():
        return DEFAULT_DATA
    raise FileNotFoundError(
        f"no data folder given: pass --data DIR or set DRIFTSEG_DATA (the default {DEFAULT_DATA} "
        "does not exist)"
    )


@dataclass(frozen=True)
class FrameFolder:
    root: Path
    splits: dict[str, list[str]]
    class_names: list[str]
    palette: list[list[int]]
    ignore_index: int

    @classmethod
    def open(cls, data: str | Path | None = None) -> "FrameFolder":
        root = resolve_data_dir(data)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} does not exist")
        for part in ("images", "labels"):
            if not (root / part).is_dir():
                raise FileNotFoundError(f"{root} lacks the folder {part}/ (expected images/, labels/, splits.json)")
        splits_file = root / "splits.json"
        if not splits_file.is_file():
            raise FileNotFoundError(f"{root} lacks splits.json (named, ordered lists of frame names)")
        splits = json.loads(splits_file.read_text())
        if not isinstance(splits, dict) or not all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in splits.values()
        ):
            raise ValueError(f"{splits_file} should map split names to lists of frame names")
        classes_file = root / "classes.json"
        meta = json.loads(classes_file.read_text()) if classes_file.is_file() else {}
        names = meta.get("names", CAMVID_CLASSES)
        return cls(
            root=root,
            splits=splits,
            class_names=names,
            palette=meta.get("palette", CAMVID_PALETTE),
            ignore_index=meta.get("ignore_index", len(names)),
        )

    def frames(self, split: str) -> list[str]:
        """The split's frame names in order; `name[start:stop]` is that slice of split `name` (Python's
        slice rules, either bound optional)."""
        name = whole_split(split)
        if name not in self.splits:
            raise UnknownSplit(f"split {name!r} is not in {self.root / 'splits.json'}; it has {sorted(self.splits)}")
        part = SPLIT_SLICE.fullmatch(split)
        if not part:
            return self.splits[name]
        bounds = [int(b) if b else None for b in (part["start"], part["stop"])]
        names = self.splits[name][slice(*bounds)]
        if not names:
            raise ValueError(f"split {split!r} is empty: {name!r} has {len(self.splits[name])} frames")
        return names

    def image_path(self, name: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.root / "images" / f"{name}{suffix}"
            if path.is_file():
                return path
        raise FileNotFoundError(f"frame {name!r} has no image in {self.root / 'images'} ({'/'.join(IMAGE_SUFFIXES)})")

    def label_path(self, name: str) -> Path:
        path = self.root / "labels" / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"frame {name!r} has no label: {path} is missing")
        return path

    def read_image(self, name: str) -> np.ndarray:
        """RGB uint8 [H, W, 3]."""
        with Image.open(self.image_path(name)) as im:
            return np.array(im.convert("RGB"))

    def read_label(self, name: str) -> np.ndarray:
        """Class ids uint8 [H, W]; ignore_index marks void pixels."""
        with Image.open(self.label_path(name)) as im:
            label = np.array(im)
        if label.ndim != 2:
            raise ValueError(f"label of {name!r} should be a single-channel PNG, got shape {label.shape}")
        return label

    def check_split(self, split: str) -> list[str]:
        """The split's frames, after checking that every one has an image and a label."""
        names = self.frames(split)
        for name in names:
            self.image_path(name)
            self.label_path(name)
        return names
