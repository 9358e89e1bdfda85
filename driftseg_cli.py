"""The `driftseg` command: `driftseg <command> [<args>]`, each command a module's main(argv)."""
import importlib
import sys

# command words -> (module:function, what it does)
COMMANDS = {
    ("train", "source"): ("training.source:main", "train a model on the labelled source split"),
    ("train", "adversarial"): ("training.adversarial:main", "output-space adversarial adaptation to unlabelled target frames"),
    ("train", "seat"): ("training.seat:main", "adversarial adaptation with separate source and target BN branches"),
    ("train", "self-training"): ("training.self_training:main", "train on source labels and target pseudo-labels"),
    ("calibrate",): ("training.calibrate:main", "store the automatic mode's shift calibration in a checkpoint"),
    ("bench", "accuracy"): ("bench.cli:accuracy_main", "the online benchmark: methods x streams"),
    ("bench", "checkpoints"): ("bench.checkpoints:main", "checkpoints side by side on streams, against a baseline and an oracle"),
    ("bench", "speed"): ("bench.speed:main", "per-frame cost of methods at batch 1, round robin, vs the frozen model"),
    ("bench", "model"): ("bench.model:main", "raw throughput of the frozen and adapted pipeline at batch sizes, no HTTP"),
    ("bench", "precision"): ("bench.precision:main", "labels, mIoU and time of the network in bf16/fp16 against fp32"),
    ("bench", "load"): ("bench.load:main", "closed-loop load test of a running server: frames/s, latency, errors"),
    ("export", "onnx"): ("adapters.onnx_engine:main", "export the adapted function, stream states as graph inputs, to ONNX"),
    ("serve",): ("service.cli:main", "serve segmentation over HTTP, adapting per stream"),
}


def usage() -> str:
    lines = ["usage: driftseg <command> [<args>]", "", "commands:"]
    for words, (_, what) in COMMANDS.items():
        name = " ".join(words)
        lines.append(f"  {name:<18}{what} (driftseg {name} --help)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for words, (target, _) in COMMANDS.items():
        if tuple(argv[:len(words)]) == words:
            module, function = target.split(":")
            getattr(importlib.import_module(module), function)(argv[len(words):])
            return
    print(usage(), file=sys.stderr)
    raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)


if __name__ == "__main__":
    main()
