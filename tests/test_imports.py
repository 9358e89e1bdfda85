"""What each package may import: driftseg.data only NumPy, Pillow, torch and torchvision (the serving
image imports it, without the bench extra); the offline jobs and the service never the benchmark; and
no driftseg module imports itself round a circle. Each check of what gets loaded runs in a fresh
interpreter, so that what other tests imported does not count."""
import ast
import importlib.util
import re
import subprocess
import sys
import tomllib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("imagecorruptions", "skimage", "scipy", "cv2", "matplotlib", "httpx", "fastapi", "onnxruntime")


def modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def import_all(package: str) -> str:
    """Code importing every module of `package`."""
    return (f"import importlib, pkgutil, {package} as p\n"
            f"for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'):\n"
            f"    importlib.import_module(m.name)")


def test_data_imports_nothing_heavy() -> None:
    loaded = modules_after(import_all("driftseg.data"))
    assert {"driftseg.data.streams", "driftseg.data.corruptions", "driftseg.data.metrics"} <= loaded
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY)
    assert not any(m.startswith(("driftseg.bench", "driftseg.training", "driftseg.service")) for m in loaded)


def test_night_needs_no_corruption_package() -> None:
    loaded = modules_after("import numpy as np\nfrom driftseg.data.corruptions import corrupt\n"
                           "corrupt(np.zeros((4, 4, 3), np.uint8), 'night', 3, seed=0)")
    assert "imagecorruptions" not in loaded


@pytest.mark.parametrize("package", ["driftseg.training", "driftseg.service"])
def test_training_and_service_never_import_the_benchmark(package) -> None:
    loaded = modules_after(import_all(package))
    assert not [m for m in loaded if m.startswith("driftseg.bench")]
    folder = REPO / package.split(".")[1]
    named = [f"{p.relative_to(REPO)}" for p in folder.rglob("*.py") if "driftseg.bench" in p.read_text()]
    assert not named


def test_frames_are_scaled_to_the_unit_interval_in_one_place() -> None:
    """uint8 -> float in [0, 1] is driftseg.data.transforms' to_unit / to_tensor, nowhere else."""
    pattern = re.compile(r"div_?\(\s*255")
    folders = ["models", "adapters", "data", "bench", "training", "service"]
    examples = REPO / "models" / "examples"  # a user's own scripts (README), not driftseg's code
    found = [f"{p.relative_to(REPO)}" for d in folders for p in (REPO / d).rglob("*.py")
             if examples not in p.parents and pattern.search(p.read_text())]
    assert found == ["data/transforms.py"]


def driftseg_modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name, from pyproject's package-dir (each
    subpackage lives in a top-level folder)."""
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = {"driftseg": "driftseg", **folders}
    modules = {}
    for package, folder in folders.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            modules[".".join([package, *(p for p in parts if p != "__init__")])] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The driftseg modules that module `name` imports anywhere in it: at the top, inside functions and
    under TYPE_CHECKING alike (a circle dodged by importing late is still a circle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return (found & set(modules)) - {name}


def test_no_import_cycles() -> None:
    modules = driftseg_modules()
    assert {"driftseg.service.settings", "driftseg.adapters.pipeline", "driftseg.cli"} <= set(modules)
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert "driftseg.service.formats" in graph["driftseg.service.segmenter"]  # the graph sees `from X import mod`
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        # the cycle lists each module before one that imports it
        pytest.fail(f"driftseg modules import each other round a circle: {' imports '.join(reversed(e.args[1]))}")
