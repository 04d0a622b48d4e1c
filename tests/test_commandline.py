"""The one ``aecli`` command (``aecli.cli``): every subcommand's help and refusals answer without
torch, the shared options mean the same everywhere, ``--noise KIND[:LEVEL]`` is checked against
the noise schema, tab completion, and ``python -m aecli.X`` still working."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aecli import cli
from aecli.config import SCHEMAS

from .conftest import cli_env

USE_COMMANDS = ("evaluate", "encode", "map", "search", "denoise", "sample", "score", "finetune")


def python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=120)


def subparsers() -> dict:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_help_and_refusals_answer_without_importing_torch(tmp_path):
    """``aecli --help``, each ``aecli CMD --help``, a missing run dir, bad numbers, a bad --noise,
    ...: each is answered (exit 0, or 1 with one message) and torch is still not imported."""
    fake = tmp_path / "fake"  # passes the RUN check: a dir with checkpoints/
    (fake / "checkpoints").mkdir(parents=True)
    missing = f"RUN: {tmp_path / 'nowhere'} does not exist"
    refusals = {**{(c, str(tmp_path / "nowhere")): missing for c in USE_COMMANDS if c != "score"},
                ("score", str(tmp_path / "nowhere"), "test"): missing,
                ("sample", str(fake), "--n", "0"): "--n: 0 is below 1",
                ("evaluate", str(fake), "--knn", "0"): "--knn: 0 is below 1",
                ("score", str(fake), "nothing"): "INPUT: 'nothing' is neither 'test' nor a folder",
                ("denoise", str(fake), str(tmp_path)): "INPUT_DIR: denoise needs a folder of images and a folder",
                ("denoise", str(fake), "--noise", "salt:0.1"): "--noise: 'salt' names no noise",
                ("evaluate", str(fake), "--data-root", str(tmp_path / "moved")):
                    f"--data-root: {tmp_path / 'moved'} is no folder",
                # conflicting options: refused, not one of them silently ignored
                ("search", str(fake), "--query", "42", "--measure"): "--query: --measure scores every test image",
                ("denoise", str(fake), str(tmp_path), str(fake), "--synthetic"):
                    "--synthetic: --synthetic measures on the run's test split, but folders were given",
                ("sample", str(fake), "--interpolate", "1", "2", "--n", "5"):
                    "--n: --n is for prior samples (neither --interpolate nor --manifold), but this command "
                    "interpolates 1 2",
                ("sample", str(fake), "--manifold", "--steps", "5"): "--steps: --steps is for --interpolate",
                ("sample", str(fake), "--side", "5"): "--side: --side is for --manifold, but this command draws "
                                                      "prior samples"}
    calls = [["--help"], *([c, "--help"] for c in cli.BY_NAME), *map(list, refusals)]
    code = f"""
import contextlib, io, json, sys
from aecli import cli
answers = []
for argv in {calls!r}:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as e:
            status = e.code
    answers.append([argv, status, out.getvalue(), err.getvalue()])
print(json.dumps({{"torch": "torch" in sys.modules, "answers": answers}}))
"""
    result = python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["torch"] is False
    for argv, status, out, err in found["answers"]:
        if argv == ["train", "--help"]:  # Hydra's help
            assert status == 0 and "== Configuration groups ==" in out and "model: ae, contractive, conv" in out, out
        elif argv[-1] == "--help":
            assert status == 0 and "usage: aecli" in out and "examples:\n  aecli " in out, argv
        else:
            assert status == 1 and out == "", argv
            lines = err.strip().splitlines()
            assert len(lines) == 2 and lines[0].startswith("aecli: error: ") and lines[1].startswith("  fix: "), argv
            assert lines[0].startswith(f"aecli: error: {refusals[tuple(argv)]}"), (argv, lines)


def test_every_subcommand_opens_its_help_with_examples_of_itself():
    for name, sub in subparsers().items():
        examples = sub.epilog.splitlines()
        assert examples[0] == "examples:" and 2 <= len(examples) - 1 <= 3, name
        assert all(line.startswith(f"  aecli {name}") or "tensorboard" in line for line in examples[1:]), name


def test_an_option_has_one_name_grammar_and_meaning_in_every_subcommand():
    seen: dict[str, tuple] = {}
    for name, sub in subparsers().items():
        for action in sub._actions:
            for flag in action.option_strings:
                kind = getattr(action.type, "__name__", action.type)  # at_least(N): an int, bounds may differ
                grammar = (action.dest, action.metavar, kind, action.choices, action.nargs, action.const)
                assert seen.setdefault(flag, grammar) == grammar, (name, flag, seen[flag], grammar)
    shared = {"--checkpoint", "--device", "--out", "--data-root"}
    for name in USE_COMMANDS:
        flags = {f for a in subparsers()[name]._actions for f in a.option_strings}
        assert shared <= flags, (name, shared - flags)
        positional = next(a for a in subparsers()[name]._actions if a.dest == "run")
        assert positional.metavar == "RUN"
    with_seed = {n for n, s in subparsers().items() if any("--seed" in a.option_strings for a in s._actions)}
    assert with_seed == {"evaluate", "map", "search", "denoise", "sample", "finetune"}
    with_noise = {n for n, s in subparsers().items() if any("--noise" in a.option_strings for a in s._actions)}
    assert with_noise == {"evaluate", "denoise"}
    out_help = {a.help for s in subparsers().values() for a in s._actions if "--out" in a.option_strings}
    assert out_help == {"write the outputs into DIR (default: the run dir)"}


def test_a_tilde_is_expanded_in_every_path_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "in").mkdir()
    args = cli.build_parser().parse_args(["denoise", "~/run", "~/in", "~/out", "--out", "~/o", "--data-root", "~"])
    cli.check(args)  # '~/run' exists only expanded: the RUN check passes
    assert (args.run, args.input_dir, args.output_dir) == tuple(str(tmp_path / d) for d in ("run", "in", "out"))
    assert args.out == tmp_path / "o" and args.data_root == str(tmp_path)
    args = cli.build_parser().parse_args(["evaluate", "~/run", "~/run"])
    cli.check(args)
    assert args.run == [str(tmp_path / "run")] * 2
    args = cli.build_parser().parse_args(["score", "~/run", "test"])
    cli.check(args)
    assert args.input == "test"


@pytest.mark.parametrize("spec, problem", [
    ("salt", "'salt' names no noise (kinds: none, binomial, gaussian)"),
    ("binomial:lots", "'lots' is not a number"),
    ("binomial:1.5", "p=1.5 is out of range: a binomial noise's p must be in [0, 1)"),
    ("gaussian:-0.1", "sigma=-0.1 is out of range: a gaussian noise's sigma must be >= 0"),
    ("none:0.2", "none has no level"),
])
def test_a_bad_noise_is_one_message_naming_noise(spec, problem, tmp_path, capsys):
    assert cli.main(["denoise", str(tmp_path), "--synthetic", "--noise", spec]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"aecli: error: --noise: {problem}" and len(err.splitlines()) == 2
    assert err.splitlines()[1].startswith("  fix: use ")


def test_noise_option_reads_kind_and_level_from_the_schema():
    assert cli.noise_option("gaussian:0.2").config() == {"_target_": "aecli.noise.GaussianNoise", "sigma": 0.2,
                                                         "clip": True}
    assert cli.noise_option("binomial").config() == {"_target_": SCHEMAS["noise"]["binomial"]._target_, "p": 0.25}
    assert cli.noise_option("none").config() == {"_target_": "aecli.noise.NoNoise"}
    assert str(cli.noise_option("binomial:0.5")) == "binomial:0.5"


def complete(line: str, tmp_path) -> set[str]:
    """What ``aecli``'s completion hook offers for ``line`` (the cursor at its end), driven the way
    the shell's ``register-python-argcomplete`` hook drives it: environment variables in, the
    candidates out (here into a file). A subprocess: argcomplete takes over file descriptors
    (8, 9) that pytest uses, and exits the process when done."""
    out = tmp_path / "completions"
    env = {**cli_env(), "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\013", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "COMP_TYPE": "9", "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    result = subprocess.run([sys.executable, "-m", "aecli"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return {c.strip() for c in out.read_text().split("\013")}


@pytest.mark.integration
def test_tab_completion_of_commands_and_options(tmp_path):
    assert complete("aecli ev", tmp_path) == {"evaluate"}
    assert complete("aecli evaluate --chec", tmp_path) == {"--checkpoint"}
    assert complete("aecli score --d", tmp_path) == {"--data-root", "--device"}
    assert "# PYTHON_ARGCOMPLETE_OK" in open(cli.__file__).read(2048)  # register-python-argcomplete looks for it


@pytest.mark.integration
def test_python_m_aecli_train_is_the_hydra_app(tmp_path):
    """(``python -m aecli.X`` shims: tests/test_use.py, test_not_a_run_dir_exits_1_with_one_message.)"""
    train = subprocess.run([sys.executable, "-m", "aecli", "train", "model=vae", "--cfg", "job"], cwd=tmp_path,
                           env=cli_env(), capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr
    assert "_target_: aecli.models.VAE" in train.stdout


def test_one_console_script_and_python_m_aecli():
    root = Path(cli.__file__).parent.parent
    text = (root / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]\n", 1)[1].split("\n\n", 1)[0]  # tomllib: Python 3.11+
    assert scripts == 'aecli = "aecli.cli:main"'
    assert "from aecli.cli import main" in (root / "aecli" / "__main__.py").read_text()
