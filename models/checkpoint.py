"""The checkpoint format: one file that `torch.load(weights_only=True)` reads without running code.

It carries everything serving and adaptation need: the architecture (`arch`, a registry name or an
architecture string such as smp:Unet:resnet18, with `arch_kwargs`: what models/registry.py's
create_model rebuilds the network from), class names and palette,
the input size, the weights with the source BN statistics, the source domain's mean
low-frequency amplitude band (for FDA), and provenance (config, data, metrics, git commit).
"""
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

import torch

from driftseg.models.registry import SegmentationNet, create_model

FORMAT = "driftseg-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "camvid-lraspp.pt"


@dataclass
class Checkpoint:
    arch: str
    arch_kwargs: dict
    class_names: list[str]
    palette: list[list[int]]
    mean: list[float]
    std: list[float]
    input_size: list[int]  # [height, width] the network sees
    weights: dict[str, torch.Tensor]
    source_amplitude: torch.Tensor  # [3, 2b, 2b] centred low-frequency band of the mean |FFT|
    source_amplitude_beta: float  # the beta that band was cut with
    config: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    git_commit: str = "unknown"
    extra: dict = field(default_factory=dict)  # e.g. shift-score calibration written by later jobs

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_model(self, device: str | torch.device = "cpu") -> SegmentationNet:
        """The network in eval mode with the checkpoint's weights, in float32."""
        model = create_model(self.arch, self.num_classes, self.mean, self.std, **self.arch_kwargs)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in self.weights.items()}
        check_weights_fit(model, self.weights, self.arch)
        model.load_state_dict(weights)
        return model.to(device).eval()


def check_weights_fit(model: torch.nn.Module, weights: dict[str, torch.Tensor], arch: str,
                      what: str = "checkpoint weights") -> None:
    """ValueError naming the first missing, unexpected or wrongly shaped weights, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    shapes = [f"{k} {list(weights[k].shape)} (expected {list(expected[k])})"
              for k in sorted(expected.keys() & weights.keys()) if tuple(weights[k].shape) != expected[k]]
    if missing or unexpected or shapes:
        raise ValueError(f"{what} do not fit architecture {arch!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {shapes[:5]}")


def git_commit() -> str:
    """The repository's HEAD; $DRIFTSEG_GIT_COMMIT where the code runs from a copy without .git."""
    if os.environ.get("DRIFTSEG_GIT_COMMIT"):
        return os.environ["DRIFTSEG_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def compact_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights in fp16 to keep the file a few MB; BN statistics stay fp32 (they are tiny and
    adaptation blends them, so their precision matters more than their size)."""
    out = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        keep = name.endswith(("running_mean", "running_var")) or not t.is_floating_point()
        out[name] = t.clone() if keep else t.half()
    return out


def write_atomically(path: Path, write: Callable[[BinaryIO], None], private: bool = False) -> None:
    """Write `path` through a temp file beside it (`.NAME.*.tmp`), flushed, fsynced and renamed over
    it: a reader sees the old file or the new one, never half of one. The file gets the permissions
    the umask allows, or stays readable by its owner alone if `private`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if not private:  # mkstemp makes the file private
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> None:
    """Write atomically: a reader never sees a half-written checkpoint."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(ckpt)}
    write_atomically(Path(path), lambda f: torch.save(payload, f))


_TYPES = {
    "arch": str, "arch_kwargs": dict, "class_names": list, "palette": list, "mean": list,
    "std": list, "input_size": list, "weights": dict, "source_amplitude": torch.Tensor,
    "source_amplitude_beta": float, "config": dict, "data": dict, "metrics": dict,
    "git_commit": str, "extra": dict,
}


def load_plain(source: str | Path | BinaryIO, not_it: str, mmap: bool = False):
    """`torch.load(weights_only=True)` of a file (tensors, numbers, strings, containers: no code runs).
    A file torch cannot read so is ValueError(`not_it`, e.g. "X is not a driftseg checkpoint") with
    why in general terms: torch's own message advises loading with weights_only=False, which runs
    whatever code the file carries, and a file that is not ours must never be loaded that way."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # torch raises many types for other formats, truncated files and code-carrying pickles
        raise ValueError(f"{not_it}: torch.load(weights_only=True) cannot read it (not a file torch.save wrote "
                         "of tensors and plain values)") from None


def read_checkpoint_file(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint file's payload, checked to be a driftseg checkpoint of this format version
    (FileNotFoundError, ValueError saying what it is not). `mmap`: the tensors are mapped, not read,
    so that a quick check of a file costs little."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = load_plain(path, f"{path} is not a driftseg checkpoint", mmap)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a driftseg checkpoint (no 'format': {FORMAT!r} entry)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {payload.get('format_version')}, expected {FORMAT_VERSION}"
        )
    return payload


def load_checkpoint(path: str | Path | None = None) -> Checkpoint:
    """Load and validate a checkpoint; the default checkpoint when `path` is None."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    payload = read_checkpoint_file(path)
    names = {f.name for f in fields(Checkpoint)}
    for name in names:
        if name not in payload:
            raise ValueError(f"{path} lacks the field {name!r}")
        if not isinstance(payload[name], _TYPES[name]):
            raise ValueError(
                f"{path}: field {name!r} should be {_TYPES[name].__name__}, "
                f"got {type(payload[name]).__name__}"
            )
    ckpt = Checkpoint(**{k: payload[k] for k in names})
    _validate(ckpt, path)
    try:  # on the meta device: the shapes are checked without allocating the network
        with torch.device("meta"):
            skeleton = create_model(ckpt.arch, ckpt.num_classes, ckpt.mean, ckpt.std, **ckpt.arch_kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot build architecture {ckpt.arch!r} with {ckpt.arch_kwargs}: {e}") from e
    check_weights_fit(skeleton, ckpt.weights, f"{ckpt.arch}")
    return ckpt


def _validate(ckpt: Checkpoint, path: Path) -> None:
    c = ckpt.num_classes
    if len(ckpt.palette) != c or any(len(rgb) != 3 for rgb in ckpt.palette):
        raise ValueError(f"{path}: palette should be {c} RGB triples, one per class")
    if len(ckpt.mean) != 3 or len(ckpt.std) != 3:
        raise ValueError(f"{path}: mean and std should have 3 values each")
    if len(ckpt.input_size) != 2 or min(ckpt.input_size) < 1:
        raise ValueError(f"{path}: input_size should be [height, width], got {ckpt.input_size}")
    amp = ckpt.source_amplitude
    if amp.ndim != 3 or amp.shape[0] != 3 or amp.shape[1] != amp.shape[2] or amp.shape[1] % 2:
        raise ValueError(
            f"{path}: source_amplitude should be [3, 2b, 2b], got {list(amp.shape)}"
        )
    not_tensors = [k for k, v in ckpt.weights.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: weights should all be tensors, these are not: {not_tensors[:5]}")
    bad = [k for k, v in ckpt.weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: non-finite values in weights {bad[:5]}")


def file_sha256(path: Path) -> str:
    """The checkpoint file's fingerprint: what stream snapshots and exported engines record."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
