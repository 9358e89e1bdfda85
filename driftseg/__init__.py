"""driftseg: semantic segmentation served over HTTP, adapting to each camera stream without backprop.

The subpackages live in the repository's top-level folders (models/, adapters/, bench/, training/,
service/) and are installed as driftseg.models, driftseg.adapters, ... (pyproject.toml's package-dir).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("driftseg")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
