"""`--target-frames DIR`: a plain folder of unlabelled images as an adaptation job's target set, and
self-training's recipes. The folder checks and the recipe parsing on tiny inputs; the job end to
end at toy scale (conftest.py): its checkpoint names the folder and the recipe, it refuses without
labelled source data, and a resume refuses a folder whose files changed."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from driftseg import cli
from driftseg.models.checkpoint import load_checkpoint
from driftseg.training import adversarial, self_training
from driftseg.training.resume import difference
from driftseg.training.target_folder import TargetFolder

from cut_util import run_until_cut

ITERS = 4


def solid(path: Path, colour, size=(12, 16)) -> None:
    Image.fromarray(np.full((*size, 3), colour, np.uint8)).save(path)


def fingerprint(folder: Path) -> tuple[dict, str]:
    """Each file's SHA-256 and the folder's, computed here from the bytes."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    return files, hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- the folder


def test_folder_reads_its_images_in_name_order_at_the_jobs_size(tmp_path) -> None:
    colours = {"10.png": 10, "9.png": 90, "a.png": 160, "b.PNG": 250}  # name order, not numeric
    for (name, c), size in zip(colours.items(), [(12, 16), (30, 20), (7, 9), (12, 16)]):
        solid(tmp_path / name, c, size)
    folder = TargetFolder.open(tmp_path)
    files, digest = fingerprint(tmp_path)
    assert folder.files == files and list(folder.files) == list(colours)
    assert folder.record() == {"path": str(tmp_path.resolve()), "frames": 4, "sha256": digest}
    frames = folder.frames((8, 10), "cpu")
    assert frames.shape == (4, 3, 8, 10) and frames.dtype == torch.uint8
    assert [set(f.unique().tolist()) for f in frames] == [{c} for c in colours.values()]


def test_folder_fingerprint_follows_the_contents(tmp_path) -> None:
    solid(tmp_path / "a.png", 10)
    before = TargetFolder.open(tmp_path).sha256
    solid(tmp_path / "a.png", 11)
    assert TargetFolder.open(tmp_path).sha256 != before


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nowhere", "expected a folder of images .*; found nothing there"),
    (lambda d: (d / "one.png").write_bytes(b"x") and d / "one.png", "found a file there"),
    (lambda d: d, "expected a folder of images .*; it is empty"),
    (lambda d: [solid(d / "a.png", 1), (d / "notes.txt").write_text("x"), (d / "sub").mkdir()] and d,
     "it also holds notes.txt, sub/"),
], ids=["missing", "a-file", "empty", "non-images"])
def test_folder_refusals_say_what_was_expected(tmp_path, make, message) -> None:
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        TargetFolder.open(make(tmp_path))


def test_an_image_that_does_not_decode_is_named(tmp_path) -> None:
    solid(tmp_path / "a.png", 1)
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"b\.jpg is not a readable image"):
        TargetFolder.open(tmp_path).frames((8, 10), "cpu")


def test_resume_names_the_files_that_changed() -> None:
    old, new = {"a": "1", "b": "2", "c": "3"}, {"b": "2", "c": "4", "d": "5"}
    assert difference(old, new) == "added d; removed a; changed c"
    assert difference({}, {str(i): "" for i in range(7)}) == "added 0, 1, 2, 3, 4 and 2 more"
    assert difference(0.1, 0.2) == "0.1 there, 0.2 now"


# ---------------------------------------------------------------- the recipe


def test_target_frames_default_to_the_best_measured_recipe(tmp_path) -> None:
    args = self_training.parse_args(["--target-frames", str(tmp_path), "--out", "x.pt"])
    assert args.recipe == "dacs-tau05" and args.target_split is None
    assert (args.lr, args.iters, args.ema_teacher, args.prototypes, args.classmix, args.prototype_tau) == \
        (2.5e-4, 600, 0.99, True, True, 0.5)


def test_explicit_flags_override_the_recipe(tmp_path) -> None:
    args = self_training.parse_args(["--target-frames", str(tmp_path), "--out", "x.pt", "--lr", "1e-4",
                                     "--no-classmix", "--iters", "7", "--prototype-tau", "0.2"])
    assert (args.lr, args.iters, args.classmix, args.prototype_tau, args.prototypes) == (1e-4, 7, False, 0.2, True)


def test_a_split_keeps_the_flags_own_defaults_unless_a_recipe_is_named() -> None:
    plain = self_training.parse_args(["--target-split", "t", "--out", "x.pt"])
    assert plain.recipe == "plain"
    assert (plain.lr, plain.iters, plain.ema_teacher, plain.prototypes, plain.classmix, plain.prototype_tau) == \
        (2e-4, 1000, 0.0, False, False, 0.1)
    named = self_training.parse_args(["--out", "x.pt", "--recipe", "dacs-tau05"])
    assert named.recipe == "dacs-tau05" and named.classmix and named.lr == 2.5e-4


def test_a_split_and_a_folder_together_are_refused(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        self_training.parse_args(["--target-split", "t", "--target-frames", str(tmp_path), "--out", "x.pt"])
    assert "--target-frames: not allowed with argument --target-split" in capsys.readouterr().err


# ---------------------------------------------------------------- the job


@pytest.fixture
def frames(toy_data, tmp_path) -> Path:
    """The toy folder's two target frames as JPEG, and the first again smaller, as PNG."""
    folder = tmp_path / "recording"
    folder.mkdir()
    for name in toy_data["splits"]["target2"]:
        shutil.copy(toy_data["root"] / "images" / f"{name}.jpg", folder)
    with Image.open(folder / f"{toy_data['splits']['target2'][0]}.jpg") as im:
        im.resize((100, 70)).save(folder / "zz-small.png")
    return folder


def folder_job(toy, folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(toy["root"]), "--parent", str(toy["out"]), "--out", str(out), "--device", "cpu",
            "--target-frames", str(folder), "--source-split", "train2", "--val-split", "val3", "--crop", "48", "64",
            "--batch-size", "2", "--iters", str(ITERS), "--warmup", "1", "--log-every", "1", *extra]


def test_a_folder_job_records_the_folder_and_the_recipe(toy_source, frames, tmp_path) -> None:
    out = tmp_path / "st.pt"
    self_training.main(folder_job(toy_source, frames, out))
    ckpt, parent = load_checkpoint(out), load_checkpoint(toy_source["out"])
    _, digest = fingerprint(frames)
    assert ckpt.config["job"] == "self-training" and ckpt.config["recipe"] == "dacs-tau05"
    assert (ckpt.config["lr"], ckpt.config["ema_teacher"], ckpt.config["prototype_tau"]) == (2.5e-4, 0.99, 0.5)
    assert ckpt.config["classmix"] and ckpt.config["prototypes"] and ckpt.config["iters"] == ITERS
    assert ckpt.config["target_folder"] == {"path": str(frames.resolve()), "frames": 3, "sha256": digest}
    assert ckpt.config["target_split"] is None
    assert ckpt.data["target_folder"] == str(frames.resolve()) and ckpt.data["target_frames"] == 3
    assert "target_split" not in ckpt.data and ckpt.data["source_split"] == "train2"
    log = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, ITERS + 1)) and {"seg", "pseudo", "kept"} <= log[-1].keys()
    assert any(not torch.equal(w, parent.weights[k]) for k, w in ckpt.weights.items() if w.is_floating_point())


def test_every_adaptation_job_takes_a_folder(toy_source, frames, tmp_path) -> None:
    """The folder is finetune.py's, shared by the jobs: the adversarial one adapts to it as well."""
    out = tmp_path / "adv.pt"
    adversarial.main(folder_job(toy_source, frames, out))
    ckpt = load_checkpoint(out)
    assert ckpt.config["job"] == "adversarial" and ckpt.data["target_frames"] == 3
    assert ckpt.config["target_folder"]["sha256"] == fingerprint(frames)[1]


@pytest.mark.parametrize("change, message", [
    (["--data", "{tmp}/nowhere"], r"needs the labelled source data .*nowhere does not exist"),
    (["--source-split", "labelled"], r"needs the labelled source data .*split 'labelled' is not in"),
], ids=["no-data-folder", "no-source-split"])
def test_a_folder_job_without_labelled_source_data_is_refused(toy_source, frames, tmp_path, change, message,
                                                               capsys) -> None:
    argv = folder_job(toy_source, frames, tmp_path / "x.pt") + [a.format(tmp=tmp_path) for a in change]
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "self-training", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.startswith("driftseg train self-training: error: self-training needs the labelled source data")
    with pytest.raises(ValueError, match=message):
        self_training.main(argv)
    assert not (tmp_path / "x.pt").exists()


def test_a_resume_refuses_a_folder_whose_files_changed(toy_source, frames, tmp_path) -> None:
    out = tmp_path / "cut.pt"
    argv = folder_job(toy_source, frames, out, "--save-every", "2")
    run_until_cut(lambda: self_training.main(argv), 3)
    state = out.with_suffix(".state.pt")
    assert torch.load(state, weights_only=True)["done"] == 2

    first, second, small = sorted(frames.iterdir())
    kept = {p: p.read_bytes() for p in (first, second)}
    first.unlink()
    second.write_bytes(small.read_bytes())
    solid(frames / "new.png", 7)
    with pytest.raises(ValueError, match=rf"target_files: added new\.png; removed {first.name}; changed {second.name}"):
        self_training.main(argv + ["--resume", str(state)])

    (frames / "new.png").unlink()
    for p, data in kept.items():
        p.write_bytes(data)
    self_training.main(argv + ["--resume", str(state)])  # the same folder again: it continues
    log = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, ITERS + 1)) and not state.exists()
    assert load_checkpoint(out).config["target_folder"]["frames"] == 3
