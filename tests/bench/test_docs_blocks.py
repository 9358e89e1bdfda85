"""bench/docs.py: the README's generated blocks come from the result files, and the picture is drawn."""
import json

import pytest

from driftseg.adapters.spec import method_table
from driftseg.bench import docs
from driftseg.cli import main
from driftseg.models.checkpoint import save_checkpoint

README = "intro\n<!-- --8<-- [start:headline] -->\nold\ntable\n<!-- --8<-- [end:headline] -->\noutro\n"


def test_fill_replaces_only_the_named_block() -> None:
    assert docs.fill(README, {"headline": "| new |"}) == (
        "intro\n<!-- --8<-- [start:headline] -->\n| new |\n<!-- --8<-- [end:headline] -->\noutro\n")


def test_fill_says_which_markers_are_missing() -> None:
    with pytest.raises(ValueError, match=r"no block 'methods': expected '<!-- --8<-- \[start:methods\] -->'"):
        docs.fill(README, {"methods": "x"})


def write_results(folder) -> None:
    streams = {s: {m: {"miou": 10.0 * k + i} for i, m in enumerate(docs.HEADLINE_METHODS)}
               for k, s in enumerate(["day", "fog", "continual"], 1)}
    streams["continual/1-day"] = streams["day"]
    summary = {m: {"mean_miou": 15.0 + i} for i, m in enumerate(docs.HEADLINE_METHODS)}
    (folder / "methods.json").write_text(json.dumps({"streams": streams, "summary": summary, "severity": 3}))
    (folder / "speed-peers.json").write_text(json.dumps({"methods": {"source": {"x_source": 1.0},
                                                                     "auto": {"x_source": 1.234}}}))
    (folder / "realtime.json").write_text(json.dumps({
        "summary": {"source": {"mean_miou": 36.44, "day_change": 0.0}, "auto": {"mean_miou": 47.5, "day_change": 0.52}},
        "realtime": {"summary": {"source": {"mean_miou": 36.44, "cost_vs_source": 1.0, "adapted_every": 1},
                                 "auto": {"mean_miou": 47.36, "cost_vs_source": 1.196, "adapted_every": 2}}}}))


def test_headline_rows_are_the_json_scores_and_leave_out_segments(tmp_path) -> None:
    write_results(tmp_path)
    lines = docs.headline(tmp_path).splitlines()
    assert lines[0] == "| method | day | fog | continual | mean |"
    assert lines[2] == "| `source` | 10.0 | 20.0 | 30.0 | 15.0 |"
    assert lines[5] == "| `auto` | 13.0 | 23.0 | 33.0 | 18.0 |"


def test_protocols_table_puts_both_protocols_of_a_method_in_one_row(tmp_path) -> None:
    write_results(tmp_path)
    lines = docs.protocols(tmp_path).splitlines()
    assert lines[0] == "| method | mean | mean, real time | x source | adapts every | day change |"
    assert lines[2:4] == ["| `source` | 36.4 | 36.4 | 1.00 | 1 | +0.0 |", "| `auto` | 47.5 | 47.4 | 1.20 | 2 | +0.5 |"]


def test_methods_table_takes_the_cost_from_speed_peers(tmp_path) -> None:
    write_results(tmp_path)
    rows = {line.split(" | ")[0]: line.split(" | ")[-1] for line in docs.methods_table(tmp_path).splitlines()
            if line.startswith("| `")}
    assert rows["| `auto`"] == "1.23 |" and rows["| `source`"] == "1.00 |" and rows["| `tent`"] == " |"
    assert len(rows) == len(docs.METHOD_CARDS)


def test_methods_table_lists_every_name_of_the_method_table_with_its_flags(tmp_path, monkeypatch) -> None:
    write_results(tmp_path)
    cells = {line.split(" | ")[0][3:-1]: line.split(" | ")[1:] for line in docs.methods_table(tmp_path).splitlines()
             if line.startswith("| `")}
    assert list(cells) == [row.name for row in method_table()]
    assert cells["tent"][1:4] == ["network", "yes", "no"]  # stage, backprop, served
    assert cells["ptbn"][0].startswith("`ema(m=1,alpha=0)`: ") and cells["lame"][4] == "no"  # not exported
    monkeypatch.delitem(docs.METHOD_CARDS, "lame")
    with pytest.raises(KeyError, match="lame"):
        docs.methods_table(tmp_path)


def test_readme_check_fails_on_a_stale_block_and_the_command_mends_it(tmp_path) -> None:
    write_results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README.replace("headline", "methods") + README.replace("headline", "protocols") + README)
    with pytest.raises(SystemExit, match="differ"):
        main(["bench", "readme", "--readme", str(readme), "--results", str(tmp_path), "--check"])
    main(["bench", "readme", "--readme", str(readme), "--results", str(tmp_path)])
    main(["bench", "readme", "--readme", str(readme), "--results", str(tmp_path), "--check"])
    assert docs.headline(tmp_path) in readme.read_text()


def test_picture_is_drawn_from_the_continual_stream(tiny_ckpt, tmp_path) -> None:
    save_checkpoint(tiny_ckpt, tmp_path / "tiny.pt")
    out = tmp_path / "face.png"
    main(["bench", "picture", "--checkpoint", str(tmp_path / "tiny.pt"), "--max-frames", "2", "--device", "cpu",
          "--out", str(out)])
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_picture_refuses_a_method_without_a_shift_score(tiny_ckpt, tmp_path, capsys) -> None:
    save_checkpoint(tiny_ckpt, tmp_path / "tiny.pt")
    with pytest.raises(SystemExit):
        main(["bench", "picture", "--checkpoint", str(tmp_path / "tiny.pt"), "--max-frames", "1", "--method", "ptbn",
              "--device", "cpu", "--out", str(tmp_path / "x.png")])
    assert "has no shift score" in capsys.readouterr().err
