"""`train source --resume`: a job cut off mid-way and resumed from its training state ends as the
same job run without a break would, on the toy CamVid folder (conftest.py); under torchrun every
process resumes with its own RNG (resume.py)."""
import json
import shutil

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from driftseg.models.checkpoint import load_checkpoint
from driftseg.training import source
from driftseg.training.resume import TrainingState
from cut_util import run_until_cut

ITERS, SAVE_EVERY, CUT_AT = 8, 3, 5  # the cut comes two iterations after the last save


def train(toy_data, out, *extra):
    source.main([
        "--data", str(toy_data["root"]), "--out", str(out), "--device", "cpu", "--train-split", "train2",
        "--val-split", "val3", "--input-size", "48", "64", "--crop", "40", "48", "--batch-size", "2",
        "--iters", str(ITERS), "--warmup", "2", "--log-every", "1", "--save-every", str(SAVE_EVERY), *extra,
    ])
    return [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    whole = train(toy_data, root / "whole.pt")

    cut = root / "cut.pt"
    run_until_cut(lambda: train(toy_data, cut), CUT_AT)
    state = cut.with_suffix(".state.pt")
    before = [json.loads(line) for line in cut.with_suffix(".jsonl").read_text().splitlines()]
    saved_at = torch.load(state, weights_only=True)["done"]
    kept = shutil.copy(state, root / "kept.state.pt")
    resumed = train(toy_data, cut, "--resume", str(state))
    return {"whole": (root / "whole.pt", whole), "cut": (cut, resumed), "before": before, "saved_at": saved_at,
            "state": state, "kept": kept}


def test_the_cut_run_saved_its_state_before_dying(runs):
    assert runs["saved_at"] == (CUT_AT - 1) // SAVE_EVERY * SAVE_EVERY
    assert [r["iter"] for r in runs["before"]] == list(range(1, CUT_AT))


def test_resumed_run_has_the_uninterrupted_loss_curve(runs):
    (_, whole), (_, resumed) = runs["whole"], runs["cut"]
    assert [r["iter"] for r in resumed] == list(range(1, ITERS + 1))  # the log is whole again, no repeats
    for a, b in zip(whole, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4), f"iteration {a['iter']}"
        assert b["lr"] == pytest.approx(a["lr"])


def test_resumed_run_ends_with_the_same_checkpoint(runs):
    a, b = load_checkpoint(runs["whole"][0]), load_checkpoint(runs["cut"][0])
    for name, w in a.weights.items():
        torch.testing.assert_close(b.weights[name].float(), w.float(), rtol=1e-2, atol=2e-3, msg=name)
    assert b.metrics["miou"] == pytest.approx(a.metrics["miou"], abs=0.5)
    assert b.config["resume"] == str(runs["state"]) and b.config["iters"] == ITERS
    assert b.metrics["train_seconds"] > 0


def test_finished_job_leaves_no_training_state(runs):
    assert not runs["whole"][0].with_suffix(".state.pt").exists()
    assert not runs["state"].exists()


def test_resume_refuses_a_state_of_other_arguments(toy_data, runs, tmp_path):
    with pytest.raises(ValueError, match=r"same ones \(lr: 0.002 there, 0.01 now\)"):
        train(toy_data, tmp_path / "other.pt", "--resume", str(runs["kept"]), "--lr", "0.01")


def test_resume_refuses_a_file_that_is_not_a_training_state(toy_data, runs, tmp_path):
    with pytest.raises(ValueError, match="not a driftseg training state"):
        train(toy_data, tmp_path / "other.pt", "--resume", str(runs["whole"][0]))
    (tmp_path / "README.md").write_text("# a text file\n")
    with pytest.raises(ValueError, match="not a driftseg training state") as info:
        train(toy_data, tmp_path / "other.pt", "--resume", str(tmp_path / "README.md"))
    assert "weights_only=False" not in str(info.value)


# ---------------------------------------------------------------- every process its own RNG


def _rank_rng(rank: int, world: int, init: str, state: str, drawn: str, phase: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        part = nn.Linear(2, 2)
        training = TrainingState("toy", {"part": part}, {"seed": 0}, Path(state), every=1, write=rank == 0)
        if phase == "save":
            torch.manual_seed(100 + rank)
            training.maybe_save(1, 1.0)
        else:
            torch.manual_seed(7)  # whatever the resumed process drew before, the state's RNG follows
            assert training.load(Path(state)) == (1, 1.0)
        torch.save(torch.rand(4), f"{drawn}.{phase}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_process_resumes_with_its_own_rng(tmp_path) -> None:
    state, drawn = str(tmp_path / "toy.state.pt"), str(tmp_path / "drawn")
    for phase in ("save", "load"):
        init = f"file://{tmp_path / f'rendezvous-{phase}'}"
        mp.spawn(_rank_rng, args=(2, init, state, drawn, phase), nprocs=2, join=True)
    after = {(phase, r): torch.load(f"{drawn}.{phase}.{r}") for phase in ("save", "load") for r in range(2)}
    for r in range(2):
        torch.testing.assert_close(after["load", r], after["save", r], rtol=0, atol=0)
    assert not torch.equal(after["save", 0], after["save", 1])
    with pytest.raises(ValueError, match=r"written by a job of 2 process\(es\); resume it with 2, not 1"):
        TrainingState("toy", {"part": nn.Linear(2, 2)}, {"seed": 0}, None, 0).load(Path(state))
