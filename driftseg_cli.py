"""The `driftseg` command: `driftseg train source ...`, `driftseg bench accuracy ...`."""
import sys

USAGE = """usage: driftseg <command> [<args>]

commands:
  train source      train a model on the labelled source split (driftseg train source --help)
  bench accuracy    the online benchmark: methods x streams (driftseg bench accuracy --help)
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = tuple(argv[:2])
    if command == ("train", "source"):
        from training.source import main as run
    elif command == ("bench", "accuracy"):
        from bench.cli import accuracy_main as run
    else:
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    run(argv[2:])


if __name__ == "__main__":
    main()
