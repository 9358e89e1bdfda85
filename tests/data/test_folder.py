"""data/folder.py: where the data folder is found, and reading folders in the CamVid layout."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import driftseg.data.folder
from driftseg.data.folder import CAMVID_CLASSES, FrameFolder, resolve_data_dir

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"
needs_real = pytest.mark.skipif(not (REAL / "splits.json").is_file(), reason=f"real CamVid folder {REAL} not found")


def make_folder(root: Path, splits: dict[str, list[str]], size=(32, 48), suffix=".jpg", seed=0) -> Path:
    """A tiny folder in the CamVid layout: images/<name><suffix>, labels/<name>.png, splits.json."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in dict.fromkeys(n for names in splits.values() for n in names):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{name}{suffix}")
        Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(root / "labels" / f"{name}.png")
    (root / "splits.json").write_text(json.dumps(splits))
    return root


# ---------------------------------------------------------------- resolve_data_dir


def test_explicit_argument_wins_over_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DRIFTSEG_DATA", str(tmp_path / "from_env"))
    assert resolve_data_dir(tmp_path / "given") == (tmp_path / "given").resolve()
    assert resolve_data_dir(str(tmp_path / "given")) == (tmp_path / "given").resolve()


def test_explicit_relative_and_home_paths_are_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DRIFTSEG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("rel/dir") == tmp_path.resolve() / "rel" / "dir"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir("~/frames") == (tmp_path / "home" / "frames").resolve()


def test_environment_variable_used_without_argument(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DRIFTSEG_DATA", str(tmp_path / "from_env"))
    assert resolve_data_dir() == (tmp_path / "from_env").resolve()
    assert resolve_data_dir(None) == (tmp_path / "from_env").resolve()


def test_default_is_shared_camvid_beside_the_repository(monkeypatch) -> None:
    monkeypatch.delenv("DRIFTSEG_DATA", raising=False)
    repo = Path(driftseg.data.folder.__file__).resolve().parents[1]
    expected = repo.parent / "shared" / "data" / "camvid"
    if not expected.is_dir():
        pytest.skip(f"{expected} not present")
    assert resolve_data_dir() == expected
    monkeypatch.setenv("DRIFTSEG_DATA", "")  # empty means unset
    assert resolve_data_dir() == expected


def test_missing_default_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DRIFTSEG_DATA", raising=False)
    monkeypatch.setattr(driftseg.data.folder, "DEFAULT_DATA", tmp_path / "absent")
    with pytest.raises(FileNotFoundError) as err:
        resolve_data_dir()
    msg = str(err.value)
    assert "DRIFTSEG_DATA" in msg and "--data" in msg and str(tmp_path / "absent") in msg


# ---------------------------------------------------------------- the real folder


@needs_real
def test_real_camvid_folder_opens() -> None:
    folder = FrameFolder.open(REAL)
    assert len(folder.class_names) == 11
    assert folder.class_names == CAMVID_CLASSES
    assert folder.ignore_index == 11
    assert len(folder.palette) == 11 and all(len(c) == 3 for c in folder.palette)
    assert {"source_train", "source_val", "target_dusk"} <= set(folder.splits)
    # sizes from the folder's README
    assert len(folder.frames("source_train")) == 305
    assert len(folder.frames("source_val")) == 101
    dusk = folder.check_split("target_dusk")
    assert len(dusk) == 62
    assert dusk == sorted(dusk) and all(n.startswith("0001TP_") for n in dusk)
    assert not set(folder.frames("source_train")) & set(folder.frames("source_val"))


@needs_real
def test_real_frame_reads_as_documented() -> None:
    folder = FrameFolder.open(REAL)
    name = folder.frames("target_dusk")[0]
    image, label = folder.read_image(name), folder.read_label(name)
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert label.shape == (360, 480) and label.dtype == np.uint8
    assert label.max() <= 11
    with Image.open(REAL / "labels" / f"{name}.png") as im:
        np.testing.assert_array_equal(label, np.array(im))


# ---------------------------------------------------------------- a synthetic folder


def test_synthetic_folder_with_custom_split(tmp_path) -> None:
    splits = {"my_split": ["b_002", "a_001", "c_000"], "other": ["a_001"]}
    root = make_folder(tmp_path / "frames", splits)
    folder = FrameFolder.open(root)
    assert folder.root == root.resolve()
    assert folder.splits == splits
    assert folder.frames("my_split") == ["b_002", "a_001", "c_000"]  # the file's order, not sorted
    assert folder.check_split("my_split") == ["b_002", "a_001", "c_000"]
    assert folder.class_names == CAMVID_CLASSES and folder.ignore_index == 11
    image = folder.read_image("a_001")
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    with Image.open(root / "images" / "a_001.jpg") as im:
        np.testing.assert_array_equal(image, np.array(im.convert("RGB")))
    with Image.open(root / "labels" / "a_001.png") as im:
        np.testing.assert_array_equal(folder.read_label("a_001"), np.array(im))


def test_split_slices_follow_python_slicing(tmp_path) -> None:
    names = [f"f{i}" for i in range(5)]
    folder = FrameFolder.open(make_folder(tmp_path / "frames", {"seq": names}))
    for text, expected in [(":2", names[:2]), ("2:", names[2:]), ("1:4", names[1:4]), ("-2:", names[-2:]),
                           (":-1", names[:-1]), (":", names)]:
        assert folder.frames(f"seq[{text}]") == expected
    assert folder.check_split("seq[3:]") == ["f3", "f4"]
    with pytest.raises(ValueError, match=r"'seq\[5:\]' is empty: 'seq' has 5 frames"):
        folder.frames("seq[5:]")
    with pytest.raises(KeyError, match="'other' is not in"):
        folder.frames("other[:2]")
    with pytest.raises(KeyError, match=r"'seq\[1\]' is not in"):  # an index is not a slice
        folder.frames("seq[1]")


def test_png_images_are_read_losslessly(tmp_path) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["x"]}, suffix=".png", seed=3)
    expected = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(FrameFolder.open(root).read_image("x"), expected)


def test_environment_variable_opens_folder(tmp_path, monkeypatch) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["x"]})
    monkeypatch.setenv("DRIFTSEG_DATA", str(root))
    assert FrameFolder.open().root == root.resolve()


def test_classes_json_overrides_names_palette_ignore(tmp_path) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["x"]})
    meta = {"names": ["road", "car", "other"], "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "ignore_index": 255}
    (root / "classes.json").write_text(json.dumps(meta))
    folder = FrameFolder.open(root)
    assert folder.class_names == meta["names"]
    assert folder.palette == meta["palette"]
    assert folder.ignore_index == 255
    del meta["ignore_index"]
    (root / "classes.json").write_text(json.dumps(meta))
    assert FrameFolder.open(root).ignore_index == 3  # defaults to the number of classes


# ---------------------------------------------------------------- errors


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        FrameFolder.open(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


@pytest.mark.parametrize("part", ["images", "labels"])
def test_missing_subfolder(tmp_path, part) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["x"]})
    for f in (root / part).iterdir():
        f.unlink()
    (root / part).rmdir()
    with pytest.raises(FileNotFoundError, match=f"{part}/"):
        FrameFolder.open(root)


def test_missing_splits_json(tmp_path) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["x"]})
    (root / "splits.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"splits\.json"):
        FrameFolder.open(root)


@pytest.mark.parametrize("content", [[["x"]], {"s": "x"}, {"s": [1, 2]}])
def test_malformed_splits_json(tmp_path, content) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["x"]})
    (root / "splits.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"splits\.json"):
        FrameFolder.open(root)


def test_unknown_split_lists_available_ones(tmp_path) -> None:
    folder = FrameFolder.open(make_folder(tmp_path / "frames", {"my_split": ["x"], "zz_other": ["x"]}))
    for call in (folder.frames, folder.check_split):
        with pytest.raises(KeyError) as err:
            call("missing_split")
        msg = err.value.args[0]
        assert "'missing_split'" in msg and "['my_split', 'zz_other']" in msg


def test_image_without_label(tmp_path) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["ok", "lonely"]})
    (root / "labels" / "lonely.png").unlink()
    folder = FrameFolder.open(root)
    with pytest.raises(FileNotFoundError, match="no label") as err:
        folder.check_split("s")
    assert "'lonely'" in str(err.value) and "lonely.png" in str(err.value)
    with pytest.raises(FileNotFoundError, match="'lonely'"):
        folder.read_label("lonely")
    folder.read_image("lonely")  # the image itself is fine


def test_label_without_image(tmp_path) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["ok", "blind"]})
    (root / "images" / "blind.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="no image") as err:
        FrameFolder.open(root).check_split("s")
    assert "'blind'" in str(err.value)


def test_multichannel_label_is_refused(tmp_path) -> None:
    root = make_folder(tmp_path / "frames", {"s": ["x"]})
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "labels" / "x.png")
    with pytest.raises(ValueError, match="single-channel"):
        FrameFolder.open(root).read_label("x")
