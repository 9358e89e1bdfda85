"""The `driftseg` command: `driftseg <command> [<args>]`, each command a module's main(argv)."""
import importlib
import os
import sys

from driftseg import __version__

# command words -> (module:function, what it does)
COMMANDS = {
    ("train", "source"): ("driftseg.training.source:main", "train a model on the labelled source split"),
    ("train", "adversarial"): ("driftseg.training.adversarial:main", "output-space adversarial adaptation to unlabelled target frames"),
    ("train", "seat"): ("driftseg.training.seat:main", "adversarial adaptation with separate source and target BN branches"),
    ("train", "self-training"): ("driftseg.training.self_training:main", "train on source labels and target pseudo-labels"),
    ("train", "wise-ft"): ("driftseg.training.wise_ft:main", "interpolate an adapted checkpoint's weights with its parent's (WiSE-FT)"),
    ("calibrate",): ("driftseg.training.calibrate:main", "store the automatic mode's shift calibration in a checkpoint"),
    ("import",): ("driftseg.training.import_model:main", "bring your own trained network: its weights as a driftseg checkpoint"),
    ("segment",): ("driftseg.service.offline:main", "segment a video or image folder as one adapting stream, no server"),
    ("bench", "accuracy"): ("driftseg.bench.cli:accuracy_main", "the online benchmark: methods x streams"),
    ("bench", "checkpoints"): ("driftseg.bench.checkpoints:main", "checkpoints side by side on streams, against a baseline and an oracle"),
    ("bench", "speed"): ("driftseg.bench.speed:main", "per-frame cost of methods at batch 1, round robin, vs the frozen model"),
    ("bench", "model"): ("driftseg.bench.model:main", "raw throughput of the frozen and adapted pipeline at batch sizes, no HTTP"),
    ("bench", "precision"): ("driftseg.bench.precision:main", "labels, mIoU and time of the network in bf16/fp16 against fp32"),
    ("bench", "training"): ("driftseg.bench.training:main", "seconds per training iteration under speed-only settings (memory format, bf16, compile, threads)"),
    ("bench", "load"): ("driftseg.bench.load:main", "closed-loop load test of a running server: frames/s, latency, errors"),
    ("bench", "loop"): ("driftseg.bench.loop:main", "the self-improving loop end to end on a running server: record, adapt, gate, score"),
    ("bench", "readme"): ("driftseg.bench.docs:readme_main", "write the README's generated tables from the committed results"),
    ("bench", "picture"): ("driftseg.bench.docs:picture_main", "the README's picture: a frame's overlay beside auto's shift score over `continual`"),
    ("export", "onnx"): ("driftseg.adapters.onnx_engine:main", "export the adapted function, stream states as graph inputs, to ONNX"),
    ("serve",): ("driftseg.service.cli:main", "serve segmentation over HTTP, adapting per stream"),
    ("worker",): ("driftseg.service.job_queues:worker_main", "run adaptation jobs from the Redis job queue (DRIFTSEG_JOB_QUEUE)"),
    ("models", "add"): ("driftseg.service.model_store:add_main", "put a checkpoint into the model store streams are bound from"),
    ("models", "list"): ("driftseg.service.model_store:list_main", "the model store's models with their provenance"),
}


# the extra that installs what each command group imports beyond the core (pyproject.toml)
EXTRAS = {"train": "train", "calibrate": "train", "import": "models", "segment": "video", "bench": "bench",
          "export": "serve", "serve": "serve", "models": "serve"}


def usage(group: str | None = None) -> str:
    """The commands, or those of one group (`driftseg bench`), a line each."""
    chosen = [(" ".join(words), what) for words, (_, what) in COMMANDS.items() if group in (None, words[0])]
    width = max(len(name) for name, _ in chosen) + 2
    lines = [f"usage: driftseg {group or '<command>'} {'<command> ' if group else ''}[<args>]", "", "commands:"]
    lines += [f"  {name:<{width}}{what} (driftseg {name} --help)" for name, what in chosen]
    return "\n".join(lines) + "\n"


def run(words: tuple[str, ...], target: str, args: list[str]) -> None:
    """Import the command's module and call it; a missing extra or a user error (a file that is not
    there, a value that does not fit) is one line on stderr and exit status 2, not a traceback
    (DRIFTSEG_TRACEBACK=1 shows it)."""
    name = " ".join(words)
    module, function = target.split(":")
    try:
        command = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        extra = EXTRAS[words[0]]
        raise SystemExit(f"driftseg {name}: needs the {extra!r} extra ({e}): pip install 'driftseg[{extra}]'") from e
    try:
        command(args)
    except (OSError, ValueError, KeyError) as e:
        if os.environ.get("DRIFTSEG_TRACEBACK"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"driftseg {name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        print(f"driftseg {__version__}")
        return
    for words, (target, _) in COMMANDS.items():
        if tuple(argv[:len(words)]) == words:
            run(words, target, argv[len(words):])
            return
    groups = {words[0] for words in COMMANDS if len(words) > 1}
    group = argv[0] if argv and argv[0] in groups else None
    rest = argv[1:] if group else argv
    asked_for_help = rest[:1] in (["-h"], ["--help"]) or (group is not None and not rest)
    # help asked for goes to stdout (`driftseg --help | less`), as argparse does; usage after a wrong word to stderr
    print(usage(group), file=sys.stdout if asked_for_help else sys.stderr)
    raise SystemExit(0 if asked_for_help else 2)


if __name__ == "__main__":
    main()
