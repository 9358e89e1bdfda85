"""The adapted function in onnxruntime.

`Pipeline.adapt` (FDA and TENT excepted, see export_refusal) is exported with every stream state
tensor as a graph input and its new value as a graph output, the batch dimension dynamic, so the
adaptation itself (EMA statistics, alpha, the switch test, label calibration) runs inside the
runtime. `Onnx` is the pipeline's backend (adapters/backends.py) that runs it; resizing the frames
to the network's size and the label maps back to theirs stay in torch.

    export(pipeline, path, metadata)      write the .onnx file (atomically), metadata inside it
    Pipeline(..., backend=Onnx(path, metadata))   run it (exported first where there is no file);
                                          refused if its metadata is not `metadata`
    driftseg export onnx --out FILE       the command
"""
import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method, resolve_method
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, file_sha256, load_checkpoint, write_atomically

log = logging.getLogger("driftseg.onnx")
OPSET = 18
IR_VERSION = 10  # onnx 1.23 can write IR 14, which onnxruntime 1.31 refuses ("max supported IR version: 13")


class _FlatCore(nn.Module):
    """`pipeline.adapt` with positional tensors in and out, as an exporter wants it."""

    def __init__(self, pipeline: Pipeline, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.pipeline, self.inputs, self.outputs = pipeline, inputs, outputs
        # registered, so that the exporter sees their weights as the graph's initialisers
        self.networks = nn.ModuleList(c.module for c in pipeline.components if c.module is not None)

    def forward(self, images: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, out = self.pipeline.adapt(images, dict(zip(self.inputs, states)))
        return (scores, *(out[name] for name in self.outputs))


def _names(pipeline: Pipeline) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Example stacked states of two streams, and the names of the new states `adapt` returns."""
    refusal = pipeline.spec.export_refusal()
    if refusal:
        raise ValueError(f"no ONNX export for this method ({refusal}): export it without that component")
    batch = pipeline.stack_states([pipeline.new_state(), pipeline.new_state()])
    images = torch.rand(2, 3, *pipeline.input_size, device=pipeline.device)
    with torch.no_grad():
        _, out = pipeline.adapt(images, batch)
    return batch, list(out)


def export(pipeline: Pipeline, path: Path, metadata: dict[str, str]) -> Path:
    """Write `pipeline`'s adapted function to `path` (temp file, fsync, rename) with `metadata`
    (e.g. the checkpoint's fingerprint and the method) stored in the model."""
    batch, outputs = _names(pipeline)
    inputs = list(batch)
    images = torch.rand(2, 3, *pipeline.input_size, device=pipeline.device)
    dim = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            _FlatCore(pipeline, inputs, outputs).eval(), (images, *batch.values()), dynamo=True, opset_version=OPSET,
            input_names=["images", *inputs], output_names=["scores", *(f"new_{name}" for name in outputs)],
            dynamic_shapes={"images": {0: dim}, **({"states": tuple({0: dim} for _ in inputs)} if inputs else {})},
            verbose=False)
    model = program.model_proto
    model.ir_version = min(model.ir_version, IR_VERSION)
    for key, value in {**metadata, "inputs": ",".join(inputs), "outputs": ",".join(outputs)}.items():
        model.metadata_props.add(key=f"driftseg.{key}", value=str(value))
    write_atomically(path, lambda f: f.write(model.SerializeToString()))
    return path


def session_options():
    """onnxruntime's options for the onnx engine: torch's thread count, no busy-waiting between runs (the
    threads would take the cores from decoding and from torch), errors only in its log."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxCore:
    """`pipeline.adapt` run by onnxruntime from an exported file."""

    def __init__(self, path: Path, pipeline: Pipeline, expect: dict[str, str]):
        import onnxruntime as ort

        options = session_options()  # errors only: a CUDA provider that cannot load is reported below, once
        providers = ["CPUExecutionProvider"]
        if pipeline.device.type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own classes, not all Exceptions of one kind
            raise ValueError(f"onnxruntime cannot load {path}: {e}") from None
        self.provider = self.session.get_providers()[0]
        if pipeline.device.type == "cuda" and self.provider != "CUDAExecutionProvider":
            log.warning("onnxruntime's CUDA provider could not load (onnxruntime-gpu with CUDA 13 and cuDNN 9 "
                        "needed): running on the CPU")
        meta = self.session.get_modelmeta().custom_metadata_map
        for key, value in expect.items():
            if meta.get(f"driftseg.{key}") != value:
                raise ValueError(f"{path} was exported for {key} {meta.get(f'driftseg.{key}')!r}, not {value!r}: "
                                 "export it again with `driftseg export onnx`")
        _, outputs = _names(pipeline)
        self.inputs = meta["driftseg.inputs"].split(",") if meta.get("driftseg.inputs") else []
        self.outputs = meta["driftseg.outputs"].split(",") if meta.get("driftseg.outputs") else []
        if self.outputs != outputs:
            raise ValueError(f"{path} returns states {self.outputs}, the method needs {outputs}: export it again")
        self.device = pipeline.device

    def __call__(self, images: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feeds = {"images": images.detach().cpu().numpy()}
        feeds.update({name: batch[name].detach().cpu().numpy() for name in self.inputs})
        results = self.session.run(None, feeds)
        scores, *states = (torch.from_numpy(np.ascontiguousarray(r)).to(self.device) for r in results)
        return scores, dict(zip(self.outputs, states))


class Onnx:
    """The pipeline's backend that runs its adapted function in onnxruntime from the file `path`,
    exported there first if there is no file yet; a file whose metadata is not `metadata` is refused."""

    name, pads_batches = "onnx", False

    def __init__(self, path: Path, metadata: dict[str, str]):
        self.path, self.metadata = Path(path), metadata

    def bind(self, pipeline: Pipeline) -> OnnxCore:
        if not self.path.is_file():
            log.info("exporting the adapted function to %s", self.path)
            export(pipeline, self.path, self.metadata)
        return OnnxCore(self.path, pipeline, self.metadata)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg export onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="the checkpoint file (default: the one the package ships)")
    p.add_argument("--method", default="auto", help="method spec (tent and +fda have no export)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    args = p.parse_args(argv)
    method = resolve_method(args.method)
    try:
        pipeline = Pipeline(load_checkpoint(args.checkpoint), parse_method(method))
        export(pipeline, args.out, onnx_metadata(file_sha256(args.checkpoint), method))
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"driftseg export onnx: error: {e}\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) for {method}")


def onnx_metadata(checkpoint_sha256: str, method: str) -> dict[str, str]:
    """What an exported file must match to be served: the checkpoint file's sha256 and the method."""
    return {"checkpoint": checkpoint_sha256, "method": method}
