"""The offline jobs end to end at toy scale on real CamVid frames (conftest.py): the target frames
come without labels, so a job that read them would fail; every checkpoint must load, record its
parents, and run in the automatic online pipeline the service uses."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.models.checkpoint import file_sha256, load_checkpoint
from driftseg.training import adversarial, seat, self_training, wise_ft

ITERS = 4
WORKER = Path(__file__).with_name("ddp_worker.py")


def job_args(toy, out: Path, parent: Path) -> list[str]:
    return ["--data", str(toy["root"]), "--parent", str(parent), "--out", str(out), "--device", "cpu",
            "--source-split", "train2", "--target-split", "target2", "--val-split", "val3", "--crop", "48", "64",
            "--batch-size", "2", "--iters", str(ITERS), "--warmup", "1", "--log-every", "1"]


def bn_statistics(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if k.endswith(("running_mean", "running_var"))}


def check_servable(path: Path, parent_path: Path, job: str, log_keys: set[str]):
    """The checkpoint loads, names its parent, logged every iteration and adapts a frame with `auto`."""
    ckpt, parent = load_checkpoint(path), load_checkpoint(parent_path)
    assert ckpt.config["job"] == job and ckpt.config["world_size"] == 1
    assert ckpt.config["parents"][0] == {"path": str(parent_path), "sha256": file_sha256(parent_path), "job": "source"}
    assert ckpt.data["target_split"] == "target2" and ckpt.data["target_frames"] == 2
    assert ckpt.metrics["split"] == "val3" and 0 <= ckpt.metrics["miou"] <= 100
    assert torch.equal(ckpt.source_amplitude, parent.source_amplitude)  # FDA still moves frames to the source
    changed = [k for k, v in ckpt.weights.items() if v.is_floating_point() and not torch.equal(v, parent.weights[k])]
    assert changed  # it trained
    log = [json.loads(line) for line in path.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, ITERS + 1))
    assert log_keys <= log[-1].keys() and all(torch.isfinite(torch.tensor(r["seg"])) for r in log)

    pipeline = Pipeline(ckpt, parse_method("auto"))
    labels, states = pipeline.step(torch.rand(1, 3, *ckpt.input_size), [pipeline.new_state()])
    assert labels.shape == (1, *ckpt.input_size) and int(labels.max()) < ckpt.num_classes
    return ckpt, parent


@pytest.fixture(scope="module")
def adversarial_run(toy_source) -> Path:
    out = toy_source["root"] / "runs" / "adv.pt"
    adversarial.main(job_args(toy_source, out, toy_source["out"]) + ["--fda-beta", "0.05", "--lambda-ent", "0.005"])
    return out


def statistics_moved(ckpt, parent) -> bool:
    """The BN statistics followed the training (norms.py's layers: from the source frames alone)."""
    return any(not torch.equal(ckpt.weights[k], v) for k, v in bn_statistics(parent.weights).items())


def test_adversarial(toy_source, adversarial_run) -> None:
    ckpt, parent = check_servable(adversarial_run, toy_source["out"], "adversarial", {"seg", "adv", "d", "lr"})
    assert ckpt.config["levels"] == "separate" and ckpt.config["fda_beta"] == 0.05
    assert statistics_moved(ckpt, parent)


def test_seat_serves_a_plain_network(toy_source, tmp_path) -> None:
    out = tmp_path / "seat.pt"
    seat.main(job_args(toy_source, out, toy_source["out"]) + ["--source-branch", "net.backbone.1"])
    ckpt, parent = check_servable(out, toy_source["out"], "seat", {"seg", "adv", "d"})
    assert ckpt.config["levels"] == "fused" and ckpt.config["source_branch"] == ["net.backbone.1"]
    assert statistics_moved(ckpt, parent)


def test_seat_refuses_a_layer_switch_that_names_no_layer(toy_source, tmp_path) -> None:
    with pytest.raises(ValueError, match="names no BN layer"):
        seat.main(job_args(toy_source, tmp_path / "x.pt", toy_source["out"]) + ["--source-branch", "net.nowhere"])


def test_self_training_from_two_teachers(toy_source, adversarial_run, tmp_path, capsys) -> None:
    out = tmp_path / "st.pt"
    self_training.main(job_args(toy_source, out, toy_source["out"])
                       + ["--teachers", str(toy_source["out"]), str(adversarial_run), "--prototypes"])
    ckpt, parent = check_servable(out, toy_source["out"], "self-training", {"seg", "pseudo", "lr"})
    assert [p["path"] for p in ckpt.config["parents"]] == [str(toy_source["out"]), str(adversarial_run)]
    pseudo = ckpt.config["pseudo_labels"]
    assert 0 < pseudo["kept_fraction"] <= 1 and len(pseudo["thresholds"]) == 11
    assert f"{100 * pseudo['kept_fraction']:.1f}% of target pixels kept" in capsys.readouterr().out
    assert statistics_moved(ckpt, parent)


def test_self_training_with_an_ema_teacher_labels_every_batch(toy_source, tmp_path) -> None:
    out = tmp_path / "st-ema.pt"
    self_training.main(job_args(toy_source, out, toy_source["out"]) + ["--ema-teacher", "0.9", "--prototypes"])
    ckpt, parent = check_servable(out, toy_source["out"], "self-training", {"seg", "pseudo", "kept", "lr"})
    assert ckpt.config["ema_teacher"] == 0.9 and ckpt.config["prototype_tau"] == 0.1
    log = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert all(0 <= r["kept"] <= 1 for r in log)
    assert statistics_moved(ckpt, parent)


@pytest.mark.parametrize("teacher", [["--ema-teacher", "0.9"], []], ids=["ema-teacher", "labelled-once"])
def test_self_training_with_classmix_trains_on_pasted_target_frames(toy_source, tmp_path, teacher) -> None:
    out = tmp_path / "dacs.pt"
    self_training.main(job_args(toy_source, out, toy_source["out"]) + teacher + ["--classmix"])
    ckpt, parent = check_servable(out, toy_source["out"], "self-training", {"seg", "pseudo", "kept", "lr"})
    assert ckpt.config["classmix"] is True
    assert statistics_moved(ckpt, parent)


def test_self_training_checks_its_arguments(toy_source, tmp_path) -> None:
    with pytest.raises(SystemExit):
        self_training.main(job_args(toy_source, tmp_path / "x.pt", toy_source["out"]) + ["--top-fraction", "0"])


def test_wise_ft_lies_between_its_two_parents_and_serves(toy_source, adversarial_run, tmp_path) -> None:
    out = tmp_path / "wise.pt"
    wise_ft.main(["--data", str(toy_source["root"]), "--parent", str(toy_source["out"]), "--adapted", str(adversarial_run),
                  "--alpha", "0.25", "--out", str(out), "--val-split", "val3"])
    ckpt, parent, adapted = load_checkpoint(out), load_checkpoint(toy_source["out"]), load_checkpoint(adversarial_run)
    assert ckpt.config["job"] == "wise-ft" and ckpt.config["alpha"] == 0.25
    assert [(p["path"], p["sha256"], p["job"]) for p in ckpt.config["parents"]] == [
        (str(toy_source["out"]), file_sha256(toy_source["out"]), "source"),
        (str(adversarial_run), file_sha256(adversarial_run), "adversarial")]
    assert ckpt.data == adapted.data and ckpt.metrics["split"] == "val3" and "shift" in ckpt.extra
    for name in ("net.classifier.low_classifier.weight", "net.backbone.0.1.running_var"):  # fp16, fp32 stored
        p, a = parent.weights[name].double(), adapted.weights[name].double()
        assert not torch.allclose(p, a, rtol=1e-2)  # the adversarial job moved them
        assert torch.allclose(ckpt.weights[name].double(), 0.75 * p + 0.25 * a, rtol=1e-3, atol=1e-5)
    pipeline = Pipeline(ckpt, parse_method("auto"))
    labels, _ = pipeline.step(torch.rand(1, 3, *ckpt.input_size), [pipeline.new_state()])
    assert labels.shape == (1, *ckpt.input_size)


def test_wise_ft_refuses_checkpoints_of_different_networks(tiny_ckpt) -> None:
    other = dataclasses.replace(tiny_ckpt, input_size=[64, 96])
    with pytest.raises(ValueError, match="input_size"):
        wise_ft.interpolate(tiny_ckpt, other, 0.5)
    fewer = dataclasses.replace(tiny_ckpt, weights=dict(list(tiny_ckpt.weights.items())[1:]))
    with pytest.raises(ValueError, match="different weights"):
        wise_ft.interpolate(tiny_ckpt, fewer, 0.5)
    assert all(torch.equal(w, tiny_ckpt.weights[k].float()) for k, w in wise_ft.interpolate(tiny_ckpt, tiny_ckpt, 0.3).items()
               if w.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("job", ["adversarial", "seat", "self-training"])
def test_two_processes_with_gloo_keep_the_same_weights(toy_source, tmp_path, job) -> None:
    """torchrun, 2 CPU processes: each rank saves its network after training; the parameters
    agree (DDP averages the gradients), and so does the checkpoint rank 0 wrote."""
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           job, str(tmp_path), *job_args(toy_source, out, toy_source["out"])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    params = ranks[0]["parameters"]
    assert params.keys() == ranks[1]["parameters"].keys() and params
    for k, v in params.items():
        torch.testing.assert_close(ranks[1]["parameters"][k], v, rtol=0, atol=0, msg=k)
    ckpt = load_checkpoint(out)
    assert ckpt.config["world_size"] == 2
    served = {k: v for k, v in ckpt.weights.items() if k in params}
    for k, v in served.items():
        torch.testing.assert_close(v.float(), params[k].half().float(), msg=k)  # the checkpoint keeps fp16 weights
    parent = load_checkpoint(toy_source["out"])
    assert any(not torch.equal(v, parent.weights[k]) for k, v in served.items())


def test_committed_dusk_uda_checkpoint_names_its_chain_and_serves() -> None:
    """experiments/checkpoints/dusk-uda.pt: self-training with ClassMix from the default checkpoint on the mean
    softmax of two WiSE-FT checkpoints (a second MBT round)."""
    root = Path(__file__).resolve().parents[2]
    ckpt = load_checkpoint(root / "experiments" / "checkpoints" / "dusk-uda.pt")
    assert ckpt.config["job"] == "self-training" and ckpt.config["classmix"]
    parent, *teachers = ckpt.config["parents"]
    assert parent["job"] == "source" and parent["sha256"] == file_sha256(root / "models" / "checkpoints" / "camvid-lraspp.pt")
    assert [t["path"] for t in teachers] == ckpt.config["teachers"]
    assert [t["job"] for t in teachers] == ["wise-ft", "wise-ft"]
    assert ckpt.data["target_split"] == "target_dusk" and ckpt.data["source_split"] == "source_train"
    pipeline = Pipeline(ckpt, parse_method("auto"))
    labels, _ = pipeline.step(torch.rand(1, 3, 90, 120), [pipeline.new_state()])
    assert labels.shape == (1, 90, 120)
