"""driftseg/cli.py: the command a new user types first."""
import importlib

import pytest

from driftseg import __version__, cli


def run(capsys, *argv) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `driftseg ARGV`."""
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"driftseg {__version__}" and __version__ != "0+unknown"


def test_a_group_alone_prints_its_commands_only(capsys):
    code, out, _ = run(capsys, "bench")
    commands = [line.split()[:2] for line in out.splitlines() if line.startswith("  ")]
    assert code == 0 and commands and all(words[0] == "bench" for words in commands)
    assert {words[1] for words in commands} == {w[1] for w in cli.COMMANDS if w[0] == "bench"}


def test_no_command_is_an_error_and_help_is_not(capsys):
    for argv in [(), ("nonsense",)]:
        code, out, err = run(capsys, *argv)
        assert code == 2 and not out and "usage: driftseg" in err
    for argv in [("--help",), ("-h",), ("bench", "--help")]:  # help asked for: stdout, so `driftseg --help | less` works
        code, out, err = run(capsys, *argv)
        assert code == 0 and "usage: driftseg" in out and not err


def test_command_names_and_descriptions_never_run_together(capsys):
    _, out, _ = run(capsys, "--help")
    rows = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(rows) == len(cli.COMMANDS)
    for words, (_, what) in cli.COMMANDS.items():
        name = " ".join(words)
        [row] = [r for r in rows if r.strip().startswith(name + " ")]
        assert row.strip().startswith(name + "  ") and what in row


def test_a_user_error_is_one_line_not_a_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DRIFTSEG_TRACEBACK", raising=False)
    code, _, err = run(capsys, "train", "source", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt"))
    assert code == 2
    assert err.strip() == f"driftseg train source: error: data folder {tmp_path / 'nowhere'} does not exist"


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTSEG_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        cli.main(["train", "source", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt")])


def test_a_missing_extra_is_named(capsys, monkeypatch):
    real = importlib.import_module

    def without_serve(name, *args):
        if name == "driftseg.service.cli":
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", without_serve)
    with pytest.raises(SystemExit) as e:
        cli.main(["serve"])
    assert "needs the 'serve' extra" in str(e.value.code) and "pip install 'driftseg[serve]'" in str(e.value.code)
