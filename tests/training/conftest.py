"""A toy CamVid folder copied from the real one (two labelled training frames, three validation
frames, two target frames without labels) and a toy source checkpoint trained on it."""
import json
import shutil
from pathlib import Path

import pytest

from driftseg.training import source

from toy_sizes import SIZE, SOURCE_ITERS

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict:
    if not (REAL / "splits.json").is_file():
        pytest.skip(f"real CamVid folder {REAL} not found")
    root = tmp_path_factory.mktemp("camvid_toy")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    real = json.loads((REAL / "splits.json").read_text())
    # the jobs calibrate the shift score on the validation split, which needs at least 3 frames
    splits = {"train2": real["source_train"][:2], "val3": real["source_val"][:3], "target2": real["target_dusk"][:2]}
    for name in splits["train2"] + splits["val3"] + splits["target2"]:
        shutil.copy(REAL / "images" / f"{name}.jpg", root / "images")
    for name in splits["train2"] + splits["val3"]:  # target frames come without labels: no job may read them
        shutil.copy(REAL / "labels" / f"{name}.png", root / "labels")
    (root / "splits.json").write_text(json.dumps(splits))
    return {"root": root, "splits": splits}


@pytest.fixture(scope="session")
def toy_source(toy_data) -> dict:
    """`train source` for SOURCE_ITERS iterations at SIZE on the two training frames."""
    out = toy_data["root"] / "runs" / "nested" / "toy.pt"  # folders that do not exist yet
    source.main([
        "--data", str(toy_data["root"]), "--out", str(out), "--device", "cpu", "--train-split", "train2",
        "--val-split", "val3", "--input-size", *map(str, SIZE), "--crop", "48", "64", "--batch-size", "2",
        "--iters", str(SOURCE_ITERS), "--warmup", "1", "--log-every", "1", "--seed", "0",
    ])
    log = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    return {**toy_data, "out": out, "log": log}
