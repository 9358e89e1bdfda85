"""A plain folder of unlabelled images as an adaptation job's target frames (`--target-frames DIR`):
what a camera's recording is, with no labels and no splits.json. The images are read in name order
by the frame source `driftseg segment` uses (data/sources.py) and resized to the job's size as the
source frames are. The folder's files, each name with the SHA-256 of its bytes, are part of the
job's identity: a resume against a folder whose files changed is refused (resume.py names the files
added, removed or changed), and the checkpoint records the folder with one fingerprint of its files."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from driftseg.data.folder import IMAGE_SUFFIXES, list_images
from driftseg.data.sources import FrameSource
from driftseg.data.transforms import stack_resized
from driftseg.models.checkpoint import file_sha256

EXPECTED = f"a folder of images ({', '.join(IMAGE_SUFFIXES)}), nothing else"


@dataclass(frozen=True)
class TargetFolder:
    path: Path
    files: dict[str, str]  # file name -> SHA-256 of its bytes, in name order

    @classmethod
    def open(cls, path: str | Path) -> "TargetFolder":
        """The folder's images, checked: a missing folder, one without images or with other entries
        (a stray file would be trained on, or silently not) is refused, saying what was expected."""
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            found = "a file" if path.exists() else "nothing"
            raise FileNotFoundError(f"--target-frames {path}: expected {EXPECTED}; found {found} there")
        images = list_images(path)
        others = sorted(p.name + "/" * p.is_dir() for p in set(path.iterdir()) - set(images))
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise ValueError(f"--target-frames {path}: expected {EXPECTED}; it also holds {shown}")
        if not images:
            raise ValueError(f"--target-frames {path}: expected {EXPECTED}; it is empty")
        return cls(path, {p.name: file_sha256(p) for p in images})

    @property
    def sha256(self) -> str:
        """One fingerprint of the folder's files: their names and contents."""
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()

    def record(self) -> dict:
        """How a checkpoint's config names the folder it adapted to."""
        return {"path": str(self.path), "frames": len(self.files), "sha256": self.sha256}

    def frames(self, size: tuple[int, int], device) -> torch.Tensor:
        """The images in name order, uint8 [N, 3, H, W] at `size` (H, W), on `device`."""
        return stack_resized((image for _, image in FrameSource(self.path)), size, device)
