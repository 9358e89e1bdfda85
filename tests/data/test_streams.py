"""data/streams.py: stream specs, their order, the corrupted-frame cache and the protocol's night."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import driftseg.data.streams
from driftseg.data.corruptions import corrupt
from driftseg.data.folder import FrameFolder
from driftseg.data.streams import CONTINUAL, open_stream

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"
needs_real = pytest.mark.skipif(not (REAL / "splits.json").is_file(), reason=f"real CamVid folder {REAL} not found")

H, W = 32, 48


def make_folder(root: Path, splits: dict[str, list[str]], images: dict[str, np.ndarray] | None = None,
                seed: int = 0) -> FrameFolder:
    """A tiny CamVid-layout folder; lossless PNG images so tests can compare pixels exactly."""
    rng = np.random.default_rng(seed)
    images = images or {}
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in dict.fromkeys(n for names in splits.values() for n in names):
        image = images.get(name)
        if image is None:
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(rng.integers(0, 12, (H, W), dtype=np.uint8)).save(root / "labels" / f"{name}.png")
    (root / "splits.json").write_text(json.dumps(splits))
    return FrameFolder.open(root)


def raw(root: Path, name: str, part: str = "images") -> np.ndarray:
    with Image.open(root / part / f"{name}.png") as im:
        return np.array(im)


@pytest.fixture
def folder(tmp_path) -> FrameFolder:
    return make_folder(tmp_path / "frames", {"my_split": ["f0", "f1", "f2"], "other": ["g0"]})


@pytest.fixture
def protocol_folder(tmp_path) -> FrameFolder:
    return make_folder(tmp_path / "protocol", {"source_val": ["v0", "v1"], "target_dusk": ["d0", "d1"]}, seed=1)


# ---------------------------------------------------------------- protocol names on the real folder


@needs_real
@pytest.mark.parametrize(("spec", "split", "corruption"), [
    ("day", "source_val", None), ("dusk", "target_dusk", None), ("fog", "source_val", "fog"),
    ("night", "source_val", "night"), ("contrast", "source_val", "contrast"),
])
def test_protocol_streams_on_real_folder(spec, split, corruption, tmp_path) -> None:
    folder = FrameFolder.open(REAL)
    stream = open_stream(spec, folder, cache_dir=tmp_path)
    assert [s.name for s in stream.segments] == [spec]
    assert stream.segments[0].split == split and stream.segments[0].corruption == corruption
    assert [n for _, n in stream.names] == folder.frames(split)
    assert len(stream) == len(folder.frames(split))


@needs_real
def test_continual_segments_in_order_on_real_folder(tmp_path) -> None:
    folder = FrameFolder.open(REAL)
    stream = open_stream("continual", folder, cache_dir=tmp_path)
    assert [s.name for s in stream.segments] == ["day", "fog", "dusk", "contrast", "night", "day"]
    assert CONTINUAL == ("day", "fog", "dusk", "contrast", "night", "day")
    day, dusk = folder.frames("source_val"), folder.frames("target_dusk")
    expected = day + day + dusk + day + day + day
    assert [n for _, n in stream.names] == expected
    lengths = [len(day), len(day), len(dusk), len(day), len(day), len(day)]
    assert [s.start for s in stream.segments] == list(np.cumsum([0, *lengths[:-1]]))
    # each name is tagged with its own segment
    for seg in stream.segments:
        idx = seg.start
        assert stream.names[idx][0] is seg
    assert not list(tmp_path.rglob("*.png"))  # opening generates nothing


@needs_real
def test_real_day_frames_are_the_folder_frames(tmp_path) -> None:
    folder = FrameFolder.open(REAL)
    frames = list(open_stream("dusk", folder, cache_dir=tmp_path).frames(limit=2))
    assert len(frames) == 2
    for (image, label), name in zip(frames, folder.frames("target_dusk")[:2]):
        np.testing.assert_array_equal(image, folder.read_image(name))
        np.testing.assert_array_equal(label, folder.read_label(name))


@needs_real
def test_real_night_frame_matches_benchmark_formula(tmp_path) -> None:
    folder = FrameFolder.open(REAL)
    (image, label), = open_stream("night", folder, cache_dir=tmp_path).frames(limit=1)
    name = folder.frames("source_val")[0]
    src = folder.read_image(name).astype(np.float64)
    clean = (src / 255.0) ** 2.2 * 0.35 * np.array([0.80, 0.90, 1.15])
    expected = np.clip(clean + np.random.default_rng(0).normal(0.0, 0.02, clean.shape), 0, 1) * 255
    assert image.shape == src.shape and image.dtype == np.uint8
    assert np.abs(image.astype(float) - np.round(expected)).max() <= 1
    np.testing.assert_array_equal(label, folder.read_label(name))


# ---------------------------------------------------------------- any split, any split:corruption


def test_plain_split_spec(folder) -> None:
    stream = open_stream("my_split", folder, cache_dir=folder.root / "unused")
    assert len(stream) == 3 and [n for _, n in stream.names] == ["f0", "f1", "f2"]
    assert stream.segments[0].corruption is None
    frames = list(stream.frames())
    for (image, label), name in zip(frames, ["f0", "f1", "f2"], strict=True):
        np.testing.assert_array_equal(image, raw(folder.root, name))
        np.testing.assert_array_equal(label, raw(folder.root, name, "labels"))
    assert len(list(stream.frames(limit=2))) == 2


def test_sliced_split_spec_with_and_without_corruption(folder, tmp_path) -> None:
    stream = open_stream("my_split[1:]", folder, cache_dir=tmp_path / "c")
    assert [n for _, n in stream.names] == ["f1", "f2"] and stream.segments[0].corruption is None
    for (image, _), name in zip(stream.frames(), ["f1", "f2"], strict=True):
        np.testing.assert_array_equal(image, raw(folder.root, name))
    fog = open_stream("my_split[:2]:fog", folder, cache_dir=tmp_path / "c")
    assert fog.segments[0].split == "my_split[:2]" and fog.segments[0].corruption == "fog"
    assert [n for _, n in fog.names] == ["f0", "f1"]
    # each frame corrupted as in the whole split, seeded by its position there, not in the slice
    tail = open_stream("my_split[1:]:fog", folder, cache_dir=tmp_path / "tail")
    for (image, _), (index, name) in zip(tail.frames(), [(1, "f1"), (2, "f2")], strict=True):
        np.testing.assert_array_equal(image, corrupt(raw(folder.root, name), "fog", 3, seed=index))
    with pytest.raises(ValueError, match="unknown corruption 'foggy'"):
        open_stream("my_split[:2]:foggy", folder, cache_dir=tmp_path / "c")


def test_split_corruption_spec_is_deterministic_and_cached(folder, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DRIFTSEG_CACHE", str(cache))
    stream = open_stream("my_split:frost", folder)
    assert stream.cache_dir == cache
    seg = stream.segments[0]
    assert (seg.split, seg.corruption) == ("my_split", "frost")
    first = list(stream.frames())
    assert len(first) == 3
    assert len(list(cache.rglob("*.png"))) == 3
    for (image, label), name in zip(first, ["f0", "f1", "f2"]):
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert np.abs(image.astype(int) - raw(folder.root, name)).mean() > 5  # actually corrupted
        np.testing.assert_array_equal(label, raw(folder.root, name, "labels"))

    # a second stream reads the cache: generating again would fail
    def no_generation(*args, **kwargs):
        raise AssertionError("cached frames were generated again")

    with monkeypatch.context() as m:
        m.setattr(driftseg.data.streams, "_generate", no_generation)
        again = list(open_stream("my_split:frost", folder).frames())
    for (a, _), (b, _) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)

    # and an empty cache regenerates exactly the same frames
    fresh = list(open_stream("my_split:frost", folder, cache_dir=tmp_path / "fresh").frames())
    for (a, _), (b, _) in zip(first, fresh, strict=True):
        np.testing.assert_array_equal(a, b)


def test_severity_changes_the_frames(folder, tmp_path) -> None:
    low = list(open_stream("my_split:gaussian_noise", folder, severity=1, cache_dir=tmp_path).frames(limit=1))
    high = list(open_stream("my_split:gaussian_noise", folder, severity=5, cache_dir=tmp_path).frames(limit=1))
    clean = raw(folder.root, "f0").astype(int)
    assert np.abs(high[0][0].astype(int) - clean).mean() > np.abs(low[0][0].astype(int) - clean).mean()


def test_prepare_generates_the_same_frames_in_parallel(folder, tmp_path) -> None:
    lazy = list(open_stream("my_split:fog", folder, cache_dir=tmp_path / "lazy").frames())
    stream = open_stream("my_split:fog", folder, cache_dir=tmp_path / "eager")
    stream.prepare(workers=2)
    assert len(list((tmp_path / "eager").rglob("*.png"))) == 3
    for (a, _), (b, _) in zip(lazy, stream.frames(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_is_per_data_folder(tmp_path) -> None:
    # two folders with the same split and frame names must not share cached frames
    a = make_folder(tmp_path / "a", {"my_split": ["f0"]}, seed=10)
    b = make_folder(tmp_path / "b", {"my_split": ["f0"]}, seed=11)
    (fa, _), = open_stream("my_split:fog", a, cache_dir=tmp_path / "cache").frames()
    (fb, _), = open_stream("my_split:fog", b, cache_dir=tmp_path / "cache").frames()
    assert not np.array_equal(fa, fb)


# ---------------------------------------------------------------- the protocol's night


def test_night_matches_benchmark_formula(tmp_path) -> None:
    # bright, nearly uniform frames keep every value away from the clip at 0 and 1
    rng = np.random.default_rng(5)
    images = {n: rng.integers(190, 211, (H, W, 3), dtype=np.uint8) for n in ("n0", "n1", "n2")}
    images["n2"] = images["n1"].copy()  # same picture at another position: other noise
    folder = make_folder(tmp_path / "frames", {"my_split": ["n0", "n1", "n2"]}, images)
    out = [im for im, _ in open_stream("my_split:night", folder, cache_dir=tmp_path / "c").frames()]
    gain = np.array([0.80, 0.90, 1.15])
    for k, name in enumerate(["n0", "n1", "n2"]):
        clean = (images[name] / 255.0) ** 2.2 * 0.35 * gain
        # statistically: gain per channel, zero-mean noise of std 0.02
        resid = out[k] / 255.0 - clean
        assert abs(resid.mean()) < 0.002
        assert 0.018 < resid.std() < 0.022
        ratio = (out[k] / 255.0).reshape(-1, 3).mean(0) / clean.reshape(-1, 3).mean(0)
        np.testing.assert_allclose(ratio, 1.0, atol=0.01)
        # exactly: the noise of frame k is drawn from default_rng(k), k = the frame's index in its split
        expected = np.round(np.clip(clean + np.random.default_rng(k).normal(0.0, 0.02, clean.shape), 0, 1) * 255)
        diff = np.abs(out[k].astype(float) - expected)
        assert diff.max() <= 1 and diff.mean() < 0.01
    assert np.abs(out[1].astype(int) - out[2]).mean() > 2  # independent noise per frame


def test_night_clips_to_valid_range(tmp_path) -> None:
    images = {"black": np.zeros((H, W, 3), np.uint8), "white": np.full((H, W, 3), 255, np.uint8)}
    folder = make_folder(tmp_path / "frames", {"s": ["black", "white"]}, images)
    black, white = [im for im, _ in open_stream("s:night", folder, cache_dir=tmp_path / "c").frames()]
    # black: |N(0, 0.02)| clipped at 0, so about half the values are 0 and none are large
    assert 0.4 < (black == 0).mean() < 0.6 and black.max() <= 255 * 0.02 * 6
    # white: 0.35 * gain, never near 1
    np.testing.assert_allclose(white.reshape(-1, 3).mean(0) / 255, 0.35 * np.array([0.80, 0.90, 1.15]), atol=0.005)


# ---------------------------------------------------------------- protocol names on a synthetic folder


def test_protocol_names_use_source_val_and_target_dusk(protocol_folder, tmp_path) -> None:
    root = protocol_folder.root
    day = [im for im, _ in open_stream("day", protocol_folder, cache_dir=tmp_path / "c").frames()]
    dusk = [im for im, _ in open_stream("dusk", protocol_folder, cache_dir=tmp_path / "c").frames()]
    for im, name in zip(day + dusk, ["v0", "v1", "d0", "d1"], strict=True):
        np.testing.assert_array_equal(im, raw(root, name))
    # `fog` is source_val with fog: the same frames as the explicit spec, generated independently
    fog = [im for im, _ in open_stream("fog", protocol_folder, cache_dir=tmp_path / "c1").frames()]
    explicit = [im for im, _ in open_stream("source_val:fog", protocol_folder, cache_dir=tmp_path / "c2").frames()]
    for a, b in zip(fog, explicit, strict=True):
        np.testing.assert_array_equal(a, b)


def test_continual_on_synthetic_folder(protocol_folder, tmp_path) -> None:
    stream = open_stream("continual", protocol_folder, cache_dir=tmp_path / "cont")
    assert [s.name for s in stream.segments] == ["day", "fog", "dusk", "contrast", "night", "day"]
    assert [s.start for s in stream.segments] == [0, 2, 4, 6, 8, 10]
    frames = list(stream.frames())
    assert len(frames) == 12

    def alone(spec):
        return list(open_stream(spec, protocol_folder, cache_dir=tmp_path / f"alone_{spec}").frames())

    for seg in stream.segments:
        for (a, la), (b, lb) in zip(frames[seg.start:seg.start + 2], alone(seg.name), strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)


def test_continual10_repeats_the_continual_segments_ten_times(protocol_folder, tmp_path) -> None:
    once = open_stream("continual", protocol_folder, cache_dir=tmp_path / "c")
    stream = open_stream("continual10", protocol_folder, cache_dir=tmp_path / "c")
    assert stream.rounds == 10 and once.rounds == 1
    assert [s.name for s in stream.segments] == list(CONTINUAL) * 10
    assert [s.start for s in stream.segments] == list(range(0, 120, 2))
    assert [(s.split, s.corruption, n) for s, n in stream.names] == [(s.split, s.corruption, n) for s, n in once.names] * 10
    assert all(stream.names[s.start][0] is s for s in stream.segments)


def test_frames_per_segment(protocol_folder, tmp_path) -> None:
    stream = open_stream("continual10", protocol_folder, cache_dir=tmp_path / "c", per_segment=1)
    assert len(stream) == 60 and [s.start for s in stream.segments] == list(range(60))
    assert [n for _, n in stream.names] == ["v0", "v0", "d0", "v0", "v0", "v0"] * 10
    stream.prepare(workers=2)
    # fog, contrast and night of v0, each generated once however often the stream repeats it
    assert len(list((tmp_path / "c").rglob("*.png"))) == 3
    day = open_stream("day", protocol_folder, cache_dir=tmp_path / "c", per_segment=1)
    assert [n for _, n in day.names] == ["v0"]
    with pytest.raises(ValueError, match="frames per segment must be >= 1"):
        open_stream("day", protocol_folder, per_segment=0)


# ---------------------------------------------------------------- errors


def test_unknown_corruption(folder, tmp_path) -> None:
    with pytest.raises(ValueError) as err:
        open_stream("my_split:sunburn", folder, cache_dir=tmp_path)
    msg = str(err.value)
    assert "'sunburn'" in msg and "'night'" in msg and "'frost'" in msg and "my_split:sunburn" in msg


@pytest.mark.parametrize("spec", ["nope", "nope:frost"])
def test_unknown_stream_lists_the_protocol_names_and_the_splits(folder, tmp_path, spec) -> None:
    with pytest.raises(ValueError) as err:  # a KeyError too, for callers that look a split up
        open_stream(spec, folder, cache_dir=tmp_path)
    assert isinstance(err.value, KeyError)
    message = str(err.value)
    assert message.startswith(f"unknown stream {spec!r}: name a protocol stream (day, dusk, fog,")  # no stray quotes
    assert "continual, continual10)" in message and "(my_split, other)" in message


@pytest.mark.parametrize(("spec", "missing"), [("day", "source_val"), ("fog", "source_val"), ("dusk", "target_dusk")])
def test_protocol_name_on_folder_without_its_split(folder, tmp_path, spec, missing) -> None:
    with pytest.raises(KeyError) as err:
        open_stream(spec, folder, cache_dir=tmp_path)
    assert f"'{missing}'" in err.value.args[0]


def test_bad_severity(folder, tmp_path) -> None:
    with pytest.raises(ValueError, match="severity"):
        list(open_stream("my_split:fog", folder, severity=6, cache_dir=tmp_path).frames())


def test_every_corruption_regenerates_identically(folder, tmp_path) -> None:
    a = list(open_stream("my_split:impulse_noise", folder, cache_dir=tmp_path / "a").frames(limit=1))
    b = list(open_stream("my_split:impulse_noise", folder, cache_dir=tmp_path / "b").frames(limit=1))
    np.testing.assert_array_equal(a[0][0], b[0][0])


# ---------------------------------------------------------------- the corruption list and the cache files


def test_corruption_names_are_imagecorruptions_own() -> None:
    # driftseg.data.corruptions lists them itself, so that a stream spec is checked without the package
    from driftseg.data.corruptions import CORRUPTIONS, imagecorruptions

    assert CORRUPTIONS == tuple(imagecorruptions().get_corruption_names("all"))


def test_cached_frames_are_written_atomically(folder, tmp_path, monkeypatch) -> None:
    """Each frame goes through models/checkpoint.py's write_atomically (a temp file renamed over the
    name), so that a reader in another process never opens half a PNG; no temp file is left."""
    written = []
    write = driftseg.data.streams.write_atomically

    def recorded(path, *args, **kwargs):
        written.append(path.name)
        return write(path, *args, **kwargs)

    monkeypatch.setattr(driftseg.data.streams, "write_atomically", recorded)
    frames = list(open_stream("my_split:night", folder, cache_dir=tmp_path / "cache").frames())
    assert written == ["f0.png", "f1.png", "f2.png"]
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert files == written
    for (image, _), name in zip(frames, written, strict=True):
        with Image.open(next((tmp_path / "cache").rglob(name))) as im:
            np.testing.assert_array_equal(np.array(im), image)
