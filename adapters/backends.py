"""How a Pipeline runs its adapted function (`Pipeline.adapt`: the components' tensor work at the
network's input size), chosen by whoever builds the pipeline and passed to it:

    Eager()      as it is, in PyTorch
    Compiled()   through torch.compile (replayed as CUDA graphs on a GPU), batches padded to
                 `padded_batch_size` so that every batch size up to 32 shares one of six graphs
    onnx_engine.Onnx(path, metadata)   exported to ONNX and run by onnxruntime

`bind(pipeline)` returns the callable the pipeline calls as `core(images, batch) -> (scores, out)`.
adapters/engines.py picks one by name. The pipeline imports this module, which therefore imports
neither the pipeline nor the onnx backend, which is built on it.
"""
import torch


def padded_batch_size(b: int) -> int:
    """The batch size a compiled pipeline runs `b` frames at: the next power of two, so that a server
    whose batches take every size up to 32 compiles (and on a GPU captures) six graphs, not 32."""
    return 1 << (b - 1).bit_length()


class Eager:
    name, pads_batches = "torch", False

    def bind(self, pipeline):
        return pipeline.adapt


RECOMPILE_LIMIT = 256  # graphs of `Pipeline.adapt` dynamo keeps: pipelines x padded batch sizes


class Compiled:
    """The first batch of each padded size pays the compilation."""

    name, pads_batches = "compiled", True

    def bind(self, pipeline):
        if pipeline.spec.backprop:
            raise ValueError(f"{pipeline.spec.network} adapts by backprop, outside the compiled forward: "
                             "it cannot be compiled")
        return compile_step(pipeline.adapt, pipeline.device)


def compile_step(fn, device: torch.device):
    """`fn` (a pipeline's tensor work on one batch) through torch.compile: one graph per padded batch size,
    replayed as CUDA graphs on a GPU."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    # every pipeline's `adapt` is one code object to dynamo, compiled again per pipeline and padded batch
    # size: past its recompile limit (8 by default) it would run the rest eagerly without a word, which
    # two served models at their batch sizes, or `bench model` over a few methods, reach
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # registers prims.inductor_force_stride_order, which models/batchnorm.per_channel uses when compiled
    from torch._inductor import inductor_prims  # noqa: F401
    return torch.compile(fn, mode=mode, dynamic=False)
