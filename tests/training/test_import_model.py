"""training/import_model.py (`driftseg import`): a user's trained network becomes a checkpoint that
builds the same network, and every way the import can go wrong is refused saying the fix."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from driftseg import cli
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.models import registry
from driftseg.models.batchnorm import adaptable_norms
from driftseg.models.checkpoint import load_checkpoint
from driftseg.models.registry import create_model
from driftseg.training.import_model import main as import_main

from byom_nets import randomise_batchnorm
from synthetic_frames import domain_frames

NAMES = ["road", "car", "sky"]
MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
SIZE = [32, 64]  # smp wants multiples of 32

# arch, arch_kwargs, the import module it needs
ROUND_TRIPS = {
    "torchvision": ("torchvision:lraspp_mobilenet_v3_large", {}, None),
    "smp-resnet": ("smp:Unet:resnet18", {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
                   "segmentation_models_pytorch"),
    "smp-timm": ("smp:Unet:tu-efficientnet_b0", {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}, "timm"),
    "factory": ("byom_nets:build", {"width": 4}, None),
}


@pytest.fixture(autouse=True)
def _trust_nothing_yet(monkeypatch):
    """Each test starts with no module trusted (the import command trusts the one its user names)."""
    monkeypatch.setattr(registry, "_trusted_here", set())
    monkeypatch.delenv(registry.TRUSTED_ENV, raising=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom")
    frames = root / "frames"
    frames.mkdir()
    for i, f in enumerate(domain_frames(5, seed=0, size=(48, 80))):
        Image.fromarray((f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(frames / f"{i:03d}.png")
    classes = root / "classes.json"
    classes.write_text(json.dumps({"names": NAMES, "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "ignore_index": 255}))
    return {"root": root, "frames": frames, "classes": classes}


def user_network(arch: str, kwargs: dict):
    """A 'trained' network: random weights (rounded to what fp16 holds, as checkpoints store them) and BN
    statistics and affine parameters away from 0 / 1."""
    registry.trust_module("byom_nets")
    torch.manual_seed(0)
    model = create_model(arch, len(NAMES), MEAN, STD, **kwargs).eval()
    randomise_batchnorm(model)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not name.endswith(("running_mean", "running_var")):
                t.copy_(t.half().float())
    registry._trusted_here.clear()
    return model


def run_import(files, arch, weights, out, *more) -> None:
    import_main(["--arch", arch, "--weights", str(weights), "--classes", str(files["classes"]),
                 "--input-size", *map(str, SIZE), "--mean", *map(str, MEAN), "--std", *map(str, STD),
                 "--source-frames", str(files["frames"]), "--out", str(out), *more])


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_import_round_trip(case, files, tmp_path, capsys) -> None:
    arch, kwargs, needs = ROUND_TRIPS[case]
    if needs:
        pytest.importorskip(needs)
    model = user_network(arch, kwargs)
    weights = tmp_path / "weights.pth"
    torch.save(model.net.state_dict(), weights)
    out = tmp_path / "imported.pt"
    run_import(files, arch, weights, out, "--arch-kwargs", json.dumps(kwargs))
    assert "wrote" in capsys.readouterr().out

    ckpt = load_checkpoint(out)  # as serve loads it; the importing process trusts the factory's module
    assert (ckpt.arch, ckpt.class_names, ckpt.input_size, ckpt.mean) == (arch, NAMES, SIZE, MEAN)
    assert ckpt.data["ignore_index"] == 255 and ckpt.config["job"] == "import"
    b = int(min(SIZE) * ckpt.source_amplitude_beta)
    assert ckpt.source_amplitude.shape == (3, 2 * b, 2 * b)
    assert len(ckpt.extra["shift"]["tau"]) == len(adaptable_norms(model)) and ckpt.extra["shift"]["frames"] == 5
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build_model()(x), model(x))
    # the recommended pipeline runs on it
    pipeline = Pipeline(ckpt, parse_method("auto"))
    labels, [state] = pipeline.step(torch.rand(1, 3, 40, 70), [pipeline.new_state()])
    assert labels.shape == (1, 40, 70) and state.frames == 1


def test_an_imported_network_exports_to_onnx(files, tmp_path) -> None:
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("onnxruntime")
    from driftseg.adapters.onnx_engine import Onnx, export, onnx_metadata

    arch, kwargs, _ = ROUND_TRIPS["smp-resnet"]
    torch.save(user_network(arch, kwargs).net.state_dict(), tmp_path / "w.pth")
    run_import(files, arch, tmp_path / "w.pth", tmp_path / "unet.pt", "--arch-kwargs", json.dumps(kwargs))
    ckpt, meta = load_checkpoint(tmp_path / "unet.pt"), onnx_metadata("imported", "auto(m=0.2)+lc")
    export(Pipeline(ckpt, parse_method("auto(m=0.2)+lc")), tmp_path / "unet.onnx", meta)
    pipes = [Pipeline(ckpt, parse_method("auto(m=0.2)+lc"), backend=backend)
             for backend in (None, Onnx(tmp_path / "unet.onnx", meta))]
    (t_labels, _), (o_labels, _) = [p.step(domain_frames(2, seed=3), [p.new_state(), p.new_state()]) for p in pipes]
    assert (o_labels != t_labels).float().mean() < 1e-3


def test_torchvision_auxiliary_head_is_built_when_the_weights_have_one(files, tmp_path) -> None:
    model = user_network("torchvision:deeplabv3_mobilenet_v3_large", {"aux_loss": True})
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}, tmp_path / "w.pth")
    run_import(files, "torchvision:deeplabv3_mobilenet_v3_large", tmp_path / "w.pth", tmp_path / "fcn.pt")  # DDP-wrapped, nested
    assert load_checkpoint(tmp_path / "fcn.pt").arch_kwargs == {"aux_loss": True}


def test_a_factory_checkpoint_loads_only_where_its_module_is_trusted(files, tmp_path, monkeypatch) -> None:
    model = user_network("byom_nets:build", {})
    torch.save(model.net.state_dict(), tmp_path / "w.pth")
    run_import(files, "byom_nets:build", tmp_path / "w.pth", tmp_path / "f.pt")
    registry._trusted_here.clear()  # another process: serve, bench
    with pytest.raises(ValueError, match="DRIFTSEG_TRUSTED_MODULES=byom_nets"):
        load_checkpoint(tmp_path / "f.pt")
    monkeypatch.setenv(registry.TRUSTED_ENV, "other, byom_nets")
    assert load_checkpoint(tmp_path / "f.pt").arch == "byom_nets:build"

    pytest.importorskip("fastapi")  # and the server takes it, with the recommended method
    from fastapi.testclient import TestClient

    from driftseg.service.app import create_app
    from driftseg.service.settings import Settings

    frame = io.BytesIO()
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(frame, format="PNG")
    settings = Settings(checkpoint=tmp_path / "f.pt", method="auto", device="cpu", state_dir=tmp_path / "state")
    with TestClient(create_app(settings)) as client:
        r = client.post("/segment", params={"format": "png"}, content=frame.getvalue(),
                        headers={"Content-Type": "image/png", "X-Stream-Id": "a"})
        assert r.status_code == 200, r.text
        with Image.open(io.BytesIO(r.content)) as labels:
            assert labels.size == (70, 40)


def test_a_network_without_batchnorm_imports_for_label_calibration(files, tmp_path, capsys) -> None:
    model = user_network("byom_nets:build_without_bn", {})
    torch.save(model.net.state_dict(), tmp_path / "w.pth")
    run_import(files, "byom_nets:build_without_bn", tmp_path / "w.pth", tmp_path / "nobn.pt")
    out, err = capsys.readouterr()
    assert "no BatchNorm layer" in out and "label calibration" in out and "--method source+lc" in err
    ckpt = load_checkpoint(tmp_path / "nobn.pt")
    assert "shift" not in ckpt.extra
    pipeline = Pipeline(ckpt, parse_method("source+lc"))
    assert pipeline.step(torch.rand(1, 3, *SIZE), [pipeline.new_state()])[0].shape == (1, *SIZE)
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        Pipeline(ckpt, parse_method("auto"))


@pytest.mark.parametrize("arch,match", [
    ("unet_tiny", r"unknown architecture 'unet_tiny'.*torchvision:NAME, smp:ARCH:ENCODER or MODULE:FACTORY"),
    ("torchvision:resnet18", r"unknown torchvision segmentation model 'resnet18'.*fcn_resnet50"),
    ("smp:Unet", r"smp:ARCH:ENCODER"),
    ("smp:NoSuchNet:resnet18", r"unknown smp architecture 'NoSuchNet'.*Unet"),
    ("smp:Unet:resnet999", r"unknown smp encoder 'resnet999'"),
    ("no_such_module_xyz:build", r"cannot import 'no_such_module_xyz'"),
    ("byom_nets:missing", r"no callable 'missing'"),
    ("byom_nets:not_a_module", r"returned str, not a torch.nn.Module"),
])
def test_unknown_architecture_strings_are_refused(arch, match, files, tmp_path) -> None:
    if arch.startswith("smp:"):
        pytest.importorskip("segmentation_models_pytorch")
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=match):
        run_import(files, arch, tmp_path / "w.pth", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_weights_that_do_not_fit_name_the_keys(files, tmp_path) -> None:
    state = user_network("byom_nets:build", {}).net.state_dict()
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "stem.weight"}, r"missing \['stem.weight'\]"),
        "unexpected": ({**state, "extra.weight": torch.zeros(2)}, r"unexpected \['extra.weight'\]"),
        "shape": ({**state, "head.weight": torch.zeros(5, 8, 1, 1)}, r"head.weight \[5, 8, 1, 1\] \(expected \[3, 8, 1, 1\]\).*--classes"),
    }
    for name, (weights, match) in cases.items():
        torch.save(weights, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=match) as err:
            run_import(files, "byom_nets:build", tmp_path / f"{name}.pth", tmp_path / "x.pt")
        assert f"{name}.pth do not fit architecture 'byom_nets:build'" in str(err.value)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_weights_files_are_read_without_running_code(files, tmp_path, capsys) -> None:
    torch.save({"stem.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="is not a state dict") as info:
        run_import(files, "byom_nets:build", tmp_path / "evil.pth", tmp_path / "x.pt")
    assert "weights_only=False" not in str(info.value)
    assert "code ran" not in capsys.readouterr().out
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        run_import(files, "byom_nets:build", tmp_path / "list.pth", tmp_path / "x.pt")


def test_other_refusals(files, tmp_path) -> None:
    weights = tmp_path / "w.pth"
    torch.save(user_network("byom_nets:build", {}).net.state_dict(), weights)
    (tmp_path / "few").mkdir()
    with pytest.raises(ValueError, match="holds 0 images.*at least 3"):
        import_main(["--arch", "byom_nets:build", "--weights", str(weights), "--classes", str(files["classes"]),
                     "--input-size", "32", "64", "--source-frames", str(tmp_path / "few"), "--out", str(tmp_path / "x.pt")])
    (tmp_path / "bad.json").write_text('{"names": "road"}')
    with pytest.raises(ValueError, match='"names"'):
        import_main(["--arch", "byom_nets:build", "--weights", str(weights), "--classes", str(tmp_path / "bad.json"),
                     "--input-size", "32", "64", "--source-frames", str(files["frames"]), "--out", str(tmp_path / "x.pt")])


def test_the_command_says_a_refusal_in_one_line(files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("DRIFTSEG_TRACEBACK", raising=False)
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["import", "--arch", "nonsense", "--weights", str(tmp_path / "w.pth"), "--classes",
                  str(files["classes"]), "--input-size", "32", "64", "--source-frames", str(files["frames"]),
                  "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("driftseg import: error: unknown architecture")
