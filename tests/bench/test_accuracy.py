"""`driftseg bench accuracy` end to end on a few real frames: the JSON's exact shape, the table,
the continual plot, and the scores against the confusion matrix computed here; `continual10` on a
tiny synthetic folder: its rounds, --max-frames per segment, the rounds plot."""
import json

import numpy as np
import pytest

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import RECOMMENDED, parse_method
from driftseg.bench.accuracy import merge
from driftseg.data.folder import FrameFolder
from driftseg.data.streams import CONTINUAL
from driftseg.data.transforms import to_tensor
from driftseg.cli import main
from driftseg.models.checkpoint import save_checkpoint

METHODS = ["source", "ptbn", "auto"]


@pytest.fixture(scope="module")
def result(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    save_checkpoint(tiny_ckpt, tmp / "tiny.pt")
    out = tmp / "r.json"
    main(["bench", "accuracy", "--checkpoint", str(tmp / "tiny.pt"), "--streams", "day", "continual",
          "--methods", *METHODS, "--max-frames", "3", "--device", "cpu", "--out", str(out)])
    return out


def test_json_has_exactly_the_documented_shape(result) -> None:
    r = json.loads(result.read_text())
    assert set(r) == {"checkpoint", "checkpoint_sha256", "data", "severity", "max_frames", "auto", "streams", "summary"}
    assert r["auto"] == RECOMMENDED  # what the bare `auto` stood for in this run
    assert isinstance(r["checkpoint"], str) and isinstance(r["data"], str) and len(r["checkpoint_sha256"]) == 64
    assert r["severity"] == 3 and r["max_frames"] == 3
    segments = [f"continual/{k + 1}-{name}" for k, name in enumerate(CONTINUAL)]
    assert set(r["streams"]) == {"day", "continual", *segments}
    for stream, methods in r["streams"].items():
        assert set(methods) == set(METHODS)
        for score in methods.values():
            assert set(score) == {"miou", "dice", "class_iou", "frames", "ms_per_frame"}
            assert 0 <= score["miou"] <= 100 and 0 <= score["dice"] <= 100
            present = [v for v in score["class_iou"] if v is not None]
            assert len(score["class_iou"]) == 11 and sum(present) / len(present) == pytest.approx(score["miou"], abs=0.01)
            assert score["frames"] == (18 if stream == "continual" else 3)  # --max-frames: per segment
            assert (score["ms_per_frame"] is None) == ("/" in stream)
    assert set(r["summary"]) == set(METHODS)
    for m, summary in r["summary"].items():
        assert summary["mean_miou"] == r["streams"]["day"][m]["miou"]  # continual is left out of the mean
        assert summary["cost_vs_source"] > 0
    assert r["summary"]["source"]["day_change"] == 0


def test_table_and_plot_are_written(result) -> None:
    table = result.with_suffix(".md").read_text().splitlines()
    assert table[0].startswith("| method | day | continual | continual/1-day |") and len(table) == 2 + len(METHODS)
    png = result.with_name("r-continual.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_day_score_matches_a_confusion_matrix_computed_here(result, tiny_ckpt) -> None:
    folder = FrameFolder.open(None)
    pipeline = Pipeline(tiny_ckpt, parse_method("ptbn"))
    state, mat = pipeline.new_state(), np.zeros((11, 11), np.int64)
    for name in folder.frames("source_val")[:3]:
        labels, (state,) = pipeline.step(to_tensor(folder.read_image(name)), [state])
        target, pred = folder.read_label(name).ravel(), labels[0].numpy().ravel()
        keep = target != folder.ignore_index
        np.add.at(mat, (target[keep], pred[keep]), 1)
    present = (mat.sum(0) + mat.sum(1)) > 0
    iou = np.diag(mat) / (mat.sum(0) + mat.sum(1) - np.diag(mat))
    expected = round(100 * iou[present].mean(), 2)
    assert json.loads(result.read_text())["streams"]["day"]["ptbn"]["miou"] == pytest.approx(expected, abs=0.01)


def test_update_reruns_only_the_named_methods_and_keeps_the_rest(result, tmp_path, capsys) -> None:
    out = tmp_path / "u.json"
    out.write_text(result.read_text())
    (tmp_path / "u-continual.png").write_bytes(b"stale")
    before = json.loads(out.read_text())
    def update(*methods, frames="3"):
        main(["bench", "accuracy", "--checkpoint", before["checkpoint"], "--streams", "day", "continual",
              "--max-frames", frames, "--device", "cpu", "--out", str(out), "--update", "--methods", *methods])

    update("ptbn", "lc")
    after = json.loads(out.read_text())
    assert list(after["summary"]) == [*METHODS, "lc"]  # a rerun method keeps its place, a new one comes last
    for stream, rows in after["streams"].items():
        for m in ("source", "auto"):
            assert rows[m] == before["streams"][stream][m]
        assert rows["ptbn"]["miou"] == before["streams"][stream]["ptbn"]["miou"]  # the same method again
    assert after["summary"]["source"] == before["summary"]["source"] and after["auto"] == RECOMMENDED
    # ptbn and lc were timed in another run than source: no ratio between them
    assert "cost_vs_source" not in after["summary"]["lc"] and "cost_vs_source" not in after["summary"]["ptbn"]
    assert after["summary"]["auto"]["cost_vs_source"] == before["summary"]["auto"]["cost_vs_source"]
    assert not (tmp_path / "u-continual.png").exists()  # it would lack the kept methods
    update("source", "lc")  # source timed again: now only lc shares its run
    summary = json.loads(out.read_text())["summary"]
    assert [m for m in summary if "cost_vs_source" in summary[m]] == ["source", "lc"]
    after = json.loads(out.read_text())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        update("lc", frames="2")  # other frames than the file's
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "max_frames is 3, this run's 2" in err
    assert "bench:" not in err  # refused before any frame was run
    assert json.loads(out.read_text()) == after  # a refused update leaves the file as it was
    older = {k: v for k, v in after.items() if k not in ("max_frames", "checkpoint_sha256", "auto")}
    out.write_text(json.dumps(older))  # as files written before these were recorded: the frame counts still tell
    with pytest.raises(SystemExit):
        update("lc", frames="2")
    err = capsys.readouterr().err
    assert "before results recorded the checkpoint's hash" in err and "[2, 3] frames in the file and this run" in err
    out.write_text(json.dumps({k: v for k, v in after.items() if k != "auto"}))  # as a file of before the field
    update("lc")
    assert "auto" not in json.loads(out.read_text())  # its auto rows were not rerun: what they stood for is unknown
    update("auto")
    assert json.loads(out.read_text())["auto"] == RECOMMENDED


def test_update_refuses_another_checkpoint() -> None:
    kept = {"checkpoint_sha256": "a" * 64, "checkpoint": "c.pt", "streams": {}, "summary": {}}
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        merge(kept, kept | {"checkpoint_sha256": "b" * 64})


def test_unknown_method_fails_before_any_work(tiny_ckpt, tmp_path, capsys) -> None:
    save_checkpoint(tiny_ckpt, tmp_path / "tiny.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "accuracy", "--checkpoint", str(tmp_path / "tiny.pt"), "--methods", "source", "warp(x=1)",
              "--streams", "day", "--max-frames", "1"])
    assert exit_info.value.code == 2
    assert "unknown method component" in capsys.readouterr().err


def test_continual10_rounds_and_segments(tiny_ckpt, tmp_path, monkeypatch) -> None:
    from test_streams import make_folder

    monkeypatch.setenv("DRIFTSEG_CACHE", str(tmp_path / "cache"))
    folder = make_folder(tmp_path / "frames", {"source_val": ["v0", "v1"], "target_dusk": ["d0", "d1"]})
    save_checkpoint(tiny_ckpt, tmp_path / "tiny.pt")
    out = tmp_path / "r.json"
    main(["bench", "accuracy", "--checkpoint", str(tmp_path / "tiny.pt"), "--data", str(folder.root), "--streams",
          "continual10", "--methods", "source", "lame", "--max-frames", "1", "--device", "cpu", "--out", str(out)])
    streams = json.loads(out.read_text())["streams"]
    rounds = [f"continual10/round{r}" for r in range(1, 11)]
    segments = [f"{r}/{k + 1}-{name}" for r in rounds for k, name in enumerate(CONTINUAL)]
    assert list(streams) == ["continual10", *rounds, *segments]
    assert streams["continual10"]["lame"]["frames"] == 60
    assert all(streams[r]["source"]["frames"] == 6 for r in rounds)
    assert all(streams[s]["source"]["frames"] == 1 for s in segments)
    # the source model is the same in every round
    assert len({streams[r]["source"]["miou"] for r in rounds}) == 1
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0].startswith("| method | continual10 | continual10/round1 |") and "round1/" not in table[0]
    for png in ("r-continual10.png", "r-continual10-rounds.png"):
        assert out.with_name(png).read_bytes()[:4] == b"\x89PNG"


def _miou(pairs, ignore_index: int) -> float:
    """mIoU (%) of (label map, prediction) pairs from one confusion matrix computed here, over classes present."""
    mat = np.zeros((11, 11), np.int64)
    for target, pred in pairs:
        keep = target.ravel() != ignore_index
        np.add.at(mat, (target.ravel()[keep], pred.ravel()[keep]), 1)
    present = (mat.sum(0) + mat.sum(1)) > 0
    return round(100 * (np.diag(mat) / (mat.sum(0) + mat.sum(1) - np.diag(mat)))[present].mean(), 2)


def test_realtime_protocol_adapts_only_on_the_frames_a_method_has_time_for(tiny_ckpt, tmp_path, monkeypatch) -> None:
    """Every method slower than the frozen one is given the schedule 'one frame in 2' here (its cost is
    timing noise on a tiny model): the realtime row of ema is the score of adapting on frames 0 and 2 and
    predicting frame 1 from the state after frame 0, nothing of it kept; the frozen model's row is its
    standard one."""
    from driftseg.bench import accuracy

    monkeypatch.setattr(accuracy, "adapt_every", lambda cost: 1 if cost == 1.0 else 2)
    save_checkpoint(tiny_ckpt, tmp_path / "tiny.pt")
    out = tmp_path / "rt.json"
    main(["bench", "accuracy", "--checkpoint", str(tmp_path / "tiny.pt"), "--streams", "day", "--methods", "source",
          "ema(m=0.5)", "--max-frames", "3", "--device", "cpu", "--realtime", "--out", str(out)])
    r = json.loads(out.read_text())
    realtime = r["realtime"]
    assert realtime["streams"]["day"]["source"] == r["streams"]["day"]["source"] | {
        "ms_per_frame": None, "adapted_every": 1, "cost_vs_source": 1.0}
    assert realtime["summary"]["ema(m=0.5)"]["adapted_every"] == 2 and realtime["summary"]["ema(m=0.5)"]["cost_vs_source"] > 0

    folder, pipeline = FrameFolder.open(None), Pipeline(tiny_ckpt, parse_method("ema(m=0.5)"))
    state, pairs = pipeline.new_state(), []
    for i, name in enumerate(folder.frames("source_val")[:3]):
        labels, (new,) = pipeline.step(to_tensor(folder.read_image(name)), [state])
        state = new if i != 1 else state
        pairs.append((folder.read_label(name), labels[0].numpy()))
    assert realtime["streams"]["day"]["ema(m=0.5)"]["miou"] == pytest.approx(_miou(pairs, folder.ignore_index), abs=0.01)
    assert "Real-time protocol" in out.with_suffix(".md").read_text()


def test_realtime_needs_the_frozen_model_and_matching_files(tiny_ckpt, tmp_path, capsys) -> None:
    save_checkpoint(tiny_ckpt, tmp_path / "tiny.pt")
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "accuracy", "--checkpoint", str(tmp_path / "tiny.pt"), "--methods", "ptbn", "--realtime",
              "--streams", "day", "--max-frames", "1"])
    assert exit_info.value.code == 2 and "needs `source` among the methods" in capsys.readouterr().err
    kept = {"streams": {}, "summary": {}, "realtime": {"streams": {}, "summary": {}}}
    with pytest.raises(ValueError, match="run with --realtime as the file was"):
        merge(kept, {"streams": {}, "summary": {}})
