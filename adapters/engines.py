"""The pipeline's backends (adapters/backends.py) by the names the settings and the benchmarks use:
torch (eager), compiled, onnx. Apart from backends.py because the onnx backend is built on the
pipeline, which imports the other two."""
from pathlib import Path

from driftseg.adapters.backends import Compiled, Eager
from driftseg.adapters.onnx_engine import Onnx

BACKENDS = ("torch", "compiled", "onnx")


def create_backend(name: str, onnx_file: Path | None = None, metadata: dict[str, str] | None = None):
    """The backend by name: `torch` (eager), `compiled`, or `onnx` (run from `onnx_file`, exported
    there first where there is none, refused if its metadata is not `metadata`)."""
    if name == "torch":
        return Eager()
    if name == "compiled":
        return Compiled()
    if name == "onnx":
        if onnx_file is None:
            raise ValueError("the onnx backend needs the file to run (or export to)")
        return Onnx(onnx_file, metadata or {})
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
