"""`driftseg bench checkpoints` on a few real frames: each row is what `bench accuracy` gives that
checkpoint, changes are against the baseline row, the gap closed against the oracle row, the
adapted rows' gains against the control row."""
import dataclasses
import json

import pytest

from driftseg.bench.checkpoints import gap_closed
from driftseg.cli import main
from driftseg.models.checkpoint import save_checkpoint


def test_gap_closed() -> None:
    assert gap_closed(40.0, 30.0, 50.0) == pytest.approx(0.5)
    assert gap_closed(30.0, 30.0, 50.0) == 0 and gap_closed(25.0, 30.0, 50.0) == pytest.approx(-0.25)
    assert gap_closed(35.0, 30.0, 30.0) is None  # no gap to close


def test_rows_changes_and_gap(tiny_ckpt, tmp_path) -> None:
    paths = {}
    for name, scale in [("base", 1.0), ("control", 0.8), ("adapted", 0.9), ("oracle", 1.1)]:
        weights = {k: v * scale if k.endswith("classifier.high_classifier.weight") else v
                   for k, v in tiny_ckpt.weights.items()}
        ckpt = dataclasses.replace(tiny_ckpt, weights=weights, config={"job": name})
        paths[name] = tmp_path / f"{name}.pt"
        save_checkpoint(ckpt, paths[name])
    out = tmp_path / "c.json"
    common = ["--streams", "day", "dusk", "--max-frames", "2", "--device", "cpu"]
    main(["bench", "checkpoints", str(paths["adapted"]), "--baseline", str(paths["base"]),
          "--oracle", str(paths["oracle"]), "--control", str(paths["control"]), "--out", str(out), *common])
    r = json.loads(out.read_text())
    assert [row["role"] for row in r["rows"]] == ["baseline", "control", "adapted", "oracle"]
    assert [row["job"] for row in r["rows"]] == ["base", "control", "adapted", "oracle"]

    main(["bench", "accuracy", "--checkpoint", str(paths["adapted"]), "--methods", "source",
          "--out", str(tmp_path / "a.json"), *common])
    alone = json.loads((tmp_path / "a.json").read_text())["streams"]
    base, control, adapted, oracle = r["rows"]
    for s in ("day", "dusk"):
        assert adapted["miou"][s] == alone[s]["source"]["miou"]
        assert adapted["change"][s] == pytest.approx(adapted["miou"][s] - base["miou"][s])
        assert adapted["vs_control"][s] == pytest.approx(adapted["miou"][s] - control["miou"][s])
    assert adapted["class_iou"] == alone["dusk"]["source"]["class_iou"] and len(r["class_names"]) == 11
    present = [v for v in adapted["class_iou"] if v is not None]
    assert sum(present) / len(present) == pytest.approx(adapted["miou"]["dusk"], abs=0.01)
    assert base["vs_control"] is control["vs_control"] is oracle["vs_control"] is None
    gap = oracle["miou"]["dusk"] - base["miou"]["dusk"]
    closed = (adapted["miou"]["dusk"] - base["miou"]["dusk"]) / gap if gap > 0 else None
    assert adapted["gap_closed"] == (None if closed is None else pytest.approx(closed))
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0] == ("| checkpoint | job | day | dusk | day change | dusk change | dusk gap closed "
                        "| day vs control | dusk vs control |")
    assert "(upper bound)" in table[5] and table[9].startswith("| checkpoint | sky | building |")
    assert table[7] == "IoU per class on `dusk`:" and len(table) == 15  # two tables of four checkpoints


def test_gap_stream_must_be_benched(tiny_ckpt, tmp_path) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "checkpoints", "x.pt", "--streams", "day", "--gap-stream", "dusk"])
