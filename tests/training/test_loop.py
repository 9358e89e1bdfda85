"""training/loop.py: the one loop of the four jobs. An offline job cut off mid-way and resumed from
its training state ends as the same job run without a break (as test_resume.py checks for `train
source`); every job reads its validation frames once and writes its checkpoint once; a state is
refused by another job."""
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

import driftseg.models.checkpoint
from driftseg.data.folder import FrameFolder
from driftseg.models.checkpoint import load_checkpoint
from driftseg.training import adversarial, loop, seat, self_training, source
from cut_util import run_until_cut

ITERS, SAVE_EVERY, CUT_AT = 6, 2, 5  # the cut comes one iteration after the last save


def adversarial_args(toy, out: Path, *extra: str) -> list[str]:
    return ["--data", str(toy["root"]), "--parent", str(toy["out"]), "--out", str(out), "--device", "cpu",
            "--source-split", "train2", "--target-split", "target2", "--val-split", "val3", "--crop", "48", "64",
            "--batch-size", "2", "--iters", str(ITERS), "--warmup", "1", "--log-every", "1",
            "--save-every", str(SAVE_EVERY), "--fda-beta", "0.05", "--lambda-ent", "0.005", *extra]


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]


class Counted:
    """Counts the frames read from the folder, by name, and the files written through
    models/checkpoint.py's write_atomically (checkpoints; training states are written elsewhere)."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        read, write = FrameFolder.read_image, driftseg.models.checkpoint.write_atomically

        def counted_read(folder, name):
            self.reads[name] += 1
            return read(folder, name)

        def counted_write(path, *args, **kwargs):
            self.writes[Path(path).name] += 1
            return write(path, *args, **kwargs)

        mp.setattr(FrameFolder, "read_image", counted_read)
        mp.setattr(driftseg.models.checkpoint, "write_atomically", counted_write)


@pytest.fixture(scope="module")
def runs(toy_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial_resume")
    whole = root / "whole.pt"
    with pytest.MonkeyPatch.context() as m:
        counted = Counted(m)
        adversarial.main(adversarial_args(toy_source, whole))

    cut = root / "cut.pt"
    run_until_cut(lambda: adversarial.main(adversarial_args(toy_source, cut)), CUT_AT)
    state = cut.with_suffix(".state.pt")
    saved = torch.load(state, weights_only=True)
    kept = shutil.copy(state, root / "kept.state.pt")
    adversarial.main(adversarial_args(toy_source, cut, "--resume", str(state)))
    return {"whole": whole, "cut": cut, "counted": counted, "saved": saved, "state": state, "kept": Path(kept),
            "root": root}


def test_the_cut_job_saved_every_stateful_part(runs) -> None:
    saved = runs["saved"]
    assert saved["job"] == "adversarial" and saved["done"] == (CUT_AT - 1) // SAVE_EVERY * SAVE_EVERY
    assert set(saved["parts"]) == {"model", "discriminators", "optimizer", "schedule", "d_optimizer", "d_schedule",
                                   "source", "target"}
    assert saved["parts"]["source"] == saved["parts"]["target"] == {"drawn": 2 * saved["done"]}
    assert any(k.startswith("aux.") for k in saved["parts"]["model"])  # the auxiliary head trains too
    assert saved["fixed"]["levels"] == "separate" and saved["fixed"]["fda_beta"] == 0.05
    assert saved["world_size"] == 1 and saved["rank_rngs"] == []


def test_resumed_job_has_the_uninterrupted_loss_curve(runs) -> None:
    whole, resumed = log_of(runs["whole"]), log_of(runs["cut"])
    assert [r["iter"] for r in resumed] == list(range(1, ITERS + 1))
    for a, b in zip(whole, resumed, strict=True):
        for key in ("seg", "adv", "d"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), f"{key} at iteration {a['iter']}"
        assert b["lr"] == pytest.approx(a["lr"])


def test_resumed_job_ends_with_the_same_checkpoint(runs) -> None:
    a, b = load_checkpoint(runs["whole"]), load_checkpoint(runs["cut"])
    for name, w in a.weights.items():
        torch.testing.assert_close(b.weights[name].float(), w.float(), rtol=1e-2, atol=2e-3, msg=name)
    assert b.metrics["miou"] == pytest.approx(a.metrics["miou"], abs=0.5)
    assert b.config["resume"] == str(runs["state"]) and b.config["crop"] == [48, 64]
    assert not runs["state"].exists() and not runs["whole"].with_suffix(".state.pt").exists()


def test_an_offline_job_reads_each_frame_once_and_writes_its_checkpoint_once(runs, toy_source) -> None:
    splits = toy_source["splits"]
    assert runs["counted"].reads == Counter(splits["train2"] + splits["val3"] + splits["target2"])
    assert runs["counted"].writes == {"whole.pt": 1}
    assert load_checkpoint(runs["whole"]).extra["shift"]["frames"] == 3  # calibrated on the frames read once


def test_resume_refuses_a_state_of_another_job(runs, toy_source, tmp_path) -> None:
    with pytest.raises(ValueError, match="written by the 'adversarial' job, not 'seat'"):
        seat.main(adversarial_args(toy_source, tmp_path / "seat.pt", "--resume", str(runs["kept"])))


def test_resume_refuses_other_arguments_of_an_offline_job(runs, toy_source, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"same ones \(lambda_adv: 0.001 there, 0.01 now\)"):
        adversarial.main(adversarial_args(toy_source, tmp_path / "other.pt", "--resume", str(runs["kept"]),
                                          "--lambda-adv", "0.01"))


def test_source_reads_validation_once_and_writes_its_checkpoint_once(toy_data, tmp_path) -> None:
    out = tmp_path / "source.pt"
    with pytest.MonkeyPatch.context() as m:
        counted = Counted(m)
        source.main(["--data", str(toy_data["root"]), "--out", str(out), "--device", "cpu", "--train-split", "train2",
                     "--val-split", "val3", "--input-size", "48", "64", "--crop", "40", "48", "--batch-size", "2",
                     "--iters", "2", "--warmup", "1", "--save-every", "1"])
    splits = toy_data["splits"]
    assert counted.reads == Counter(splits["train2"] + splits["val3"])  # before: the validation frames twice
    assert counted.writes == {"source.pt": 1}  # before: written, then again with the calibration
    ckpt = load_checkpoint(out)
    assert ckpt.extra["shift"]["split"] == "val3" and ckpt.extra["shift"]["frames"] == 3
    assert not out.with_suffix(".state.pt").exists()


def test_source_resume_checks_the_arguments_it_always_checked() -> None:
    """State files written before the one loop must still resume: `train source` keeps the same
    fixed arguments (and part names, checked by test_resume.py)."""
    args = source.parse_args(["--out", "x.pt"])
    kept = {k for k in vars(args) if k not in loop.FREE_ARGS}
    assert kept == {"arch", "train_split", "init", "val_split", "input_size", "crop", "iters", "batch_size", "lr",
                    "weight_decay", "warmup", "seed"}


@pytest.mark.parametrize(("job", "main", "parts"), [
    ("seat", seat.main, {"model", "discriminators", "optimizer", "schedule", "d_optimizer", "d_schedule", "source",
                         "target"}),
    ("self-training", self_training.main, {"model", "optimizer", "schedule", "source", "target"}),
    ("self-training", self_training.main, {"model", "optimizer", "schedule", "source", "target", "teacher", "labeller"}),
])
def test_seat_and_self_training_resume_too(toy_source, tmp_path, job, main, parts) -> None:
    out = tmp_path / f"{job}.pt"
    args = adversarial_args(toy_source, out)
    del args[args.index("--fda-beta"):]  # adversarial's own flags
    if "teacher" in parts:
        args += ["--ema-teacher", "0.9", "--prototypes"]
    del args[args.index("--crop"):args.index("--crop") + 3]  # the parent's crop, resolved
    args[args.index("--iters") + 1], args[args.index("--save-every") + 1] = "3", "1"
    run_until_cut(lambda: main(args), 2)
    saved = torch.load(out.with_suffix(".state.pt"), weights_only=True)
    assert saved["job"] == job and saved["done"] == 1 and set(saved["parts"]) == parts
    main(args + ["--resume", str(out.with_suffix(".state.pt"))])
    assert [r["iter"] for r in log_of(out)] == [1, 2, 3]
    config = load_checkpoint(out).config
    assert config["job"] == job and not out.with_suffix(".state.pt").exists()
    # the config holds the arguments resolved: the parent's crop, the teachers (default: the parent)
    assert config["crop"] == load_checkpoint(toy_source["out"]).config["crop"] == [48, 64]
    if job == "self-training":
        assert config["teachers"] == [str(toy_source["out"])]
