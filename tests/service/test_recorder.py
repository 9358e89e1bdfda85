"""Recording (service/recorder.py): caps, order, atomic files, leftovers of a crash, retention, and that
the folder is what an adaptation job reads."""
import io
import logging

import numpy as np
import pytest
from PIL import Image

from driftseg.service.recorder import DRIFTED, Recorder, image_suffix
from driftseg.training.target_folder import TargetFolder


def encoded(fmt: str, seed: int = 0, size=(32, 24)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def recorded(recorder: Recorder, stream: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(recorder.folder(stream).iterdir())]


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_image_suffix_names_the_format_pil_wrote(fmt, suffix) -> None:
    assert image_suffix(encoded(fmt)) == suffix
    assert Image.open(io.BytesIO(encoded(fmt))).format == fmt


def test_image_suffix_of_anything_else_is_none() -> None:
    assert image_suffix(b"GIF89a....") is None and image_suffix(b"") is None and image_suffix(b"RIFF0000WAVE") is None


def test_the_newest_frames_are_kept_as_posted_in_order_within_the_frame_cap(tmp_path) -> None:
    recorder = Recorder(tmp_path, "all", max_frames=3, max_bytes=10**9)
    posted = [encoded("JPEG", seed) for seed in range(5)]
    for data in posted:
        assert recorder.record("cam1", data)
    assert recorded(recorder, "cam1") == posted[2:]  # name order is arrival order, bytes unchanged
    assert recorder.usage("cam1") == (3, sum(map(len, posted[2:])))


def test_the_byte_cap_drops_the_oldest_and_refuses_a_frame_over_it_alone(tmp_path) -> None:
    posted = [encoded("PNG", seed) for seed in range(4)]
    cap = len(posted[2]) + len(posted[3])
    recorder = Recorder(tmp_path, "all", max_frames=100, max_bytes=cap)
    for data in posted:
        recorder.record("cam1", data)
    assert recorded(recorder, "cam1") == posted[2:]
    assert not recorder.record("cam1", encoded("PNG", 9, size=(200, 200)))  # bigger than the cap on its own
    assert recorded(recorder, "cam1") == posted[2:]


def test_streams_are_recorded_apart_and_an_odd_id_stays_inside_the_root(tmp_path) -> None:
    recorder = Recorder(tmp_path / "rec", "all", max_frames=10, max_bytes=10**9)
    recorder.record("..", encoded("JPEG", 1))
    recorder.record("cam2", encoded("JPEG", 2))
    assert recorder.folder("..").parent == tmp_path / "rec"
    assert recorded(recorder, "..") == [encoded("JPEG", 1)] and recorded(recorder, "cam2") == [encoded("JPEG", 2)]
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["...frames", "cam2.frames"]


def test_what_is_not_an_image_is_not_recorded(tmp_path) -> None:
    recorder = Recorder(tmp_path, "all", max_frames=10, max_bytes=10**9)
    assert not recorder.record("cam1", b"not an image")
    assert recorder.usage("cam1") == (0, 0)


@pytest.mark.parametrize("mode, score, wanted", [
    ("off", 5.0, False), ("all", None, True), ("all", 0.1, True), ("drifted", None, False),
    ("drifted", DRIFTED, False), ("drifted", DRIFTED + 0.01, True), ("drifted", 0.5, False)])
def test_which_frames_each_mode_records(tmp_path, mode, score, wanted) -> None:
    assert Recorder(tmp_path, mode, 10, 10**9).wants(score) is wanted


def test_an_unknown_mode_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="off, drifted, all"):
        Recorder(tmp_path, "some", 10, 10)


def test_a_restart_finds_the_recording_removes_a_crash_leftover_and_keeps_order(tmp_path) -> None:
    first = Recorder(tmp_path, "all", max_frames=3, max_bytes=10**9)
    posted = [encoded("JPEG", seed) for seed in range(3)]
    for data in posted[:2]:
        first.record("cam1", data)
    leftover = first.folder("cam1") / ".00000000000000000001.jpg.abc.tmp"  # a write cut short
    leftover.write_bytes(b"half")
    again = Recorder(tmp_path, "all", max_frames=2, max_bytes=10**9)
    assert again.usage("cam1") == (2, len(posted[0]) + len(posted[1])) and not leftover.exists()
    again.record("cam1", posted[2])
    assert recorded(again, "cam1") == posted[1:]


def test_the_recording_is_a_folder_an_adaptation_job_reads(tmp_path) -> None:
    recorder = Recorder(tmp_path, "all", max_frames=10, max_bytes=10**9)
    for seed in range(3):
        recorder.record("cam1", encoded("JPEG", seed, size=(64, 48)))
    recorder.record("cam1", encoded("PNG", 7, size=(64, 48)))
    folder = TargetFolder.open(recorder.folder("cam1"))
    assert list(folder.files) == sorted(p.name for p in recorder.folder("cam1").iterdir())
    assert len(folder.files) == 4


def test_delete_and_retention(tmp_path) -> None:
    recorder = Recorder(tmp_path, "all", max_frames=10, max_bytes=10**9)
    for stream in ("old", "new"):
        recorder.record(stream, encoded("JPEG"))
    newest = recorder.folder("new").stat().st_mtime
    assert recorder.prune(ttl=0, now=newest + 10**9) == []  # 0: kept until deleted
    assert recorder.prune(ttl=100, now=newest + 50) == []
    assert sorted(recorder.prune(ttl=100, now=newest + 101)) == ["new", "old"]
    assert not recorder.folder("old").exists() and recorder.usage("old") == (0, 0)
    recorder.record("cam1", encoded("JPEG"))
    assert recorder.delete("cam1") == 1 and not recorder.folder("cam1").exists()
    assert recorder.delete("cam1") == 0


def test_a_disk_that_fails_skips_the_frame_with_a_warning(tmp_path, caplog) -> None:
    (tmp_path / "file").write_text("not a folder")
    recorder = Recorder(tmp_path / "file", "all", max_frames=10, max_bytes=10**9)
    with caplog.at_level(logging.WARNING, logger="driftseg.service"):
        assert not recorder.record("cam1", encoded("JPEG"))
    assert "frame not recorded" in caplog.text


def test_count_since_counts_the_frames_that_arrived_after_a_time(tmp_path) -> None:
    recorder = Recorder(tmp_path, "all", max_frames=10, max_bytes=10**9)
    for seed in range(3):
        recorder.record("cam1", encoded("JPEG", seed))
    middle = int(sorted(recorder.folder("cam1").iterdir())[1].stem)
    assert recorder.count_since("cam1", 0) == 3
    assert recorder.count_since("cam1", middle) == 1  # the frame at `middle` arrived at, not after, it
    assert recorder.count_since("cam1", 2**63) == 0 and recorder.count_since("nobody", 0) == 0
