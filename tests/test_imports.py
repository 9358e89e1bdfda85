"""What each package may import: driftseg.data only NumPy, Pillow, torch and torchvision (the serving
image imports it, without the bench extra); the offline jobs and the service never the benchmark.
Each check runs in a fresh interpreter, so that what other tests imported does not count."""
import re
import subprocess
import sys
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
