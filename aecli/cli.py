# PYTHON_ARGCOMPLETE_OK
"""``aecli COMMAND [ARGS]``: one command for all of aecli, one parser for every subcommand.

``aecli train ...`` hands its arguments to the Hydra app (``aecli.training.app``); the other
commands share one set of options (``RUN``, ``--checkpoint``, ``--device``, ``--threads``, ``--out``,
``--data-root``, ``--seed``, ``--noise KIND[:LEVEL]``), each with one name, grammar and meaning.

This module is light on purpose (argparse and ``aecli.config``, no torch): ``aecli --help``,
every ``aecli CMD --help``, tab completion and the refusal of bad arguments or a missing run dir
answer before torch is imported. Only arguments that passed these checks import the command's
recipe module (which imports torch, scikit-learn, ... at its top) and call its ``recipe(args)``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from aecli.config import SCHEMAS
from aecli.declare import bound_of
from aecli.errors import AecliError, ConfigError
from aecli.store import rundir
from aecli.store.atomic import failure_message, quiet_disk_errors_in_writer_threads
from aecli.threads import parse_threads

DEVICES = ("auto", "cpu", "cuda", "mps")
RUN_HELP = "a run dir (the 'run dir: ...' that aecli train printed), or a checkpoint file in one"


# --- --noise KIND[:LEVEL] -------------------------------------------------------------------

@dataclass(frozen=True)
class NoiseOption:
    """``--noise KIND[:LEVEL]``: a noise of the config schema (``aecli.config.SCHEMAS['noise']``),
    at its default level unless LEVEL is given."""

    kind: str
    level: float | None = None

    def config(self) -> dict[str, Any]:
        """The noise's config (``_target_`` and keys), as ``aecli.components.build`` takes it."""
        cfg = asdict(SCHEMAS["noise"][self.kind]())
        if self.level is not None:
            key = _level_key(self.kind)
            assert key is not None  # noise_option gives a level only to a noise that has one
            cfg[key] = self.level
        return cfg

    def __str__(self) -> str:
        return self.kind if self.level is None else f"{self.kind}:{self.level:g}"


def _level_key(kind: str) -> str | None:
    """The key of a noise's level: its one field with a declared range (``noise.p``, ``noise.sigma``)."""
    schema = SCHEMAS["noise"][kind]
    return next((f.name for f in fields(schema) if bound_of(schema, f.name) is not None), None)


def noise_option(text: str) -> NoiseOption:
    """``KIND[:LEVEL]`` checked against the noise schema and its bounds, or one ``--noise`` message."""
    kinds = ", ".join(SCHEMAS["noise"])
    examples = " or ".join(f"--noise {k}:{getattr(SCHEMAS['noise'][k](), key)}" for k in SCHEMAS["noise"]
                           if (key := _level_key(k)) is not None)
    kind, colon, level = text.partition(":")
    if kind not in SCHEMAS["noise"]:
        raise ConfigError("--noise", f"{kind!r} names no noise (kinds: {kinds})", f"use {examples}")
    if not colon:
        return NoiseOption(kind)
    key = _level_key(kind)
    if key is None:
        raise ConfigError("--noise", f"{kind} has no level", f"use --noise {kind}")
    try:
        value = float(level)
    except ValueError:
        raise ConfigError("--noise", f"{level!r} is not a number", f"use e.g. {examples}") from None
    bound = bound_of(SCHEMAS["noise"][kind], key)
    assert bound is not None  # _level_key named the field with a declared range
    if not bound.ok(value):
        raise ConfigError("--noise", f"{key}={value:g} is out of range: a {kind} noise's {key} must be {bound.text}",
                          f"use e.g. --noise {kind}:{getattr(SCHEMAS['noise'][kind](), key)}")
    return NoiseOption(kind, value)


# --- the shared options ---------------------------------------------------------------------

def at_least(least: int, flag: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``least``, else one ``flag`` message (raised out of
    ``parse_args``: argparse passes on exceptions other than its own)."""
    def number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(flag, f"{text!r} is not a whole number", f"pass {flag} {max(least, 1)}") from None
        if value < least:
            raise ConfigError(flag, f"{value} is below {least}", f"pass {flag} {least} or more")
        return value
    number.__name__ = "int"  # argparse names the type in its messages
    return number


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def run_options(many: bool = False) -> argparse.ArgumentParser:
    """RUN (``many``: RUN...), --checkpoint, --device, --threads, --out: every command on a trained run."""
    p = _parent()
    p.add_argument("run", metavar="RUN", nargs="+" if many else None,
                   help=RUN_HELP + (" (several; a multirun dir: every job in it)" if many else ""))
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="the best model by the run's objective (default; by default its validation loss) "
                        "or the last one")
    device_option(p)
    p.add_argument("--threads", type=parse_threads, default="auto", metavar="auto|N",
                   help="torch's CPU threads: auto (default: the fastest for this model on this machine now, "
                        "timed at startup in under a second) or a number "
                        "(scikit-learn and numpy then keep to it too)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write the outputs into DIR (default: the run dir)")
    return p


def device_option(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", choices=DEVICES, default=default,
                   help=f"where the model runs (default: {default}; auto: a GPU when there is one)")


def data_options() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="where the run's dataset lies now, if it moved since training (its dataset.root; a "
                   "table or corpus: its dataset.path)")
    return p


def seed_options(what: str) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--seed", type=int, default=0, metavar="N", help=f"seed of {what} (default 0)")
    return p


def noise_options(what: str) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--noise", metavar="KIND[:LEVEL]", default=None,
                   help=f"{what}: {', '.join(SCHEMAS['noise'])}, e.g. binomial:0.25 (masking p) or gaussian:0.3 "
                   "(sigma); default: the noise the run trained with")
    return p


# --- the commands ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One subcommand: its help, its examples (the epilog), its options and its recipe module."""

    name: str
    help: str
    examples: tuple[str, ...]
    options: Callable[[argparse.ArgumentParser], None] = lambda p: None
    parents: Callable[[], list[argparse.ArgumentParser]] = lambda: []
    module: str = ""  # aecli.use.NAME unless given
    check: Callable[[argparse.Namespace], None] = lambda args: None  # the command's own cheap checks


def _evaluate(p: argparse.ArgumentParser) -> None:
    # the defaults (None here) are aecli.use.evaluate.Options's
    p.add_argument("--iw-samples", type=at_least(0, "--iw-samples"), default=None, metavar="K",
                   help="importance samples for the VAE's -log p(x) bound (default 100; 0: skip)")
    p.add_argument("--probe-images", type=at_least(0, "--probe-images"), default=None, metavar="N",
                   help="train images the probes are fit on (default 10,000; 0: no probes)")
    p.add_argument("--knn", type=at_least(1, "--knn"), default=None, metavar="K",
                   help="neighbours of the k-NN vote (default 5)")
    p.add_argument("--batch-size", type=at_least(1, "--batch-size"), default=None, metavar="N",
                   help="default: the run's trainer.eval_batch_size")


def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path,
                   help="a multirun dir, e.g. multirun/2026-01-01/12-00-00-123456")
    p.add_argument("--sort", default=None,
                   help="column to sort by (default: test/mse_per_pixel; objective: grouped by its key); "
                   "--sort=-COLUMN: descending")


def _encode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=("train", "val", "test", "all"), default="test", help="which images "
                   "(default: test)")


def _map(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("pca", "tsne", "code"), default="pca",
                   help="pca (linear projection), tsne (t-SNE: neighbours kept together; slower) or code "
                   "(the codes themselves; latent_dim=2 only). Default: pca")


def _check_search(args: argparse.Namespace) -> None:
    if args.measure and args.query is not None:
        raise ConfigError("--query", "--measure scores every test image as a query, so --query would be ignored",
                          "drop --query to measure, or drop --measure to search for one query")


def _search(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument("--query", metavar="INDEX|IMAGE_FILE",
                      help="a test item's index, or an image file (converted and resized as the model takes it)")
    what.add_argument("--query-text", metavar="TEXT", help="a corpus run (dataset=text): search by this text")
    what.add_argument("--query-file", metavar="DOC.txt", help="a corpus run (dataset=text): search by this document")
    p.add_argument("--gallery", metavar="PATH", help="search your own collection instead of the test split: a "
                   "folder of images, a table file or a corpus (as the run was trained on); encoded once, the codes "
                   "cached by content in PATH's .aecli-cache/ (or --out)")
    p.add_argument("--k", type=at_least(1, "--k"), default=8, help="how many neighbours (default 8)")
    p.add_argument("--measure", action="store_true",
                   help="precision@k by label over the whole test split: codes vs pixels vs PCA of the same size")


def _denoise(p: argparse.ArgumentParser) -> None:
    p.add_argument("input_dir", metavar="INPUT_DIR", nargs="?", help="a folder of images (sub-folders too)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", nargs="?", help="where the denoised PNGs go")
    p.add_argument("--synthetic", action="store_true",
                   help="corrupt the test split with the run's noise (or --noise), report PSNR before and after")


def _check_denoise(args: argparse.Namespace) -> None:
    if args.synthetic and args.input_dir is not None:
        raise ConfigError("--synthetic", f"--synthetic measures on the run's test split, but folders were given "
                          f"({args.input_dir}{' ' + args.output_dir if args.output_dir else ''})",
                          "drop --synthetic to denoise the folder, or drop the folders to measure")
    if not args.synthetic and (args.input_dir is None or args.output_dir is None):
        raise ConfigError("INPUT_DIR", "denoise needs a folder of images and a folder for the results",
                          "pass RUN INPUT_DIR OUTPUT_DIR, or RUN --synthetic to measure on the test split")


SAMPLE_DEFAULTS = {"n": 64, "steps": 10, "side": 20}  # applied by _check_sample: a given one can be refused
SAMPLE_MODES = {"n": "prior samples (neither --interpolate nor --manifold)", "steps": "--interpolate",
                "side": "--manifold"}


def _sample(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="walk between test images A and B")
    what.add_argument("--manifold", action="store_true", help="decoded grid over a latent_dim=2 VAE's prior")
    d = SAMPLE_DEFAULTS
    p.add_argument("--n", type=at_least(1, "--n"), default=None, help=f"prior samples (default {d['n']})")
    p.add_argument("--steps", type=at_least(2, "--steps"), default=None, help="images along an interpolation, "
                   f"both ends included (default {d['steps']})")
    p.add_argument("--side", type=at_least(2, "--side"), default=None, help="the manifold's grid is SIDE x SIDE "
                   f"(default {d['side']})")


def _check_sample(args: argparse.Namespace) -> None:
    mode = "steps" if args.interpolate is not None else "side" if args.manifold else "n"
    for key, default in SAMPLE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
        elif key != mode:
            doing = {"n": "draws prior samples", "steps": f"interpolates {' '.join(args.interpolate or [])}",
                     "side": "draws the manifold"}[mode]
            raise ConfigError(f"--{key}", f"--{key} is for {SAMPLE_MODES[key]}, but this command {doing}",
                              f"drop --{key}, or run a separate aecli sample for it")


def _score(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT", help="a folder of images, or test (the run's test split); a table run: "
                   "a table file; a corpus run: a folder of .txt files or a CSV / JSONL file")


def _check_score(args: argparse.Namespace) -> None:
    if args.input != "test" and not Path(args.input).exists():
        raise ConfigError("INPUT", f"{args.input!r} is neither 'test' nor a folder or file",
                          "pass a folder of images (a table or corpus run: its file), or test for the run's test split")


def _finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels-per-class", type=at_least(1, "--labels-per-class"), default=10, metavar="N",
                   help="labelled train images per class (default 10)")
    p.add_argument("--steps", type=at_least(1, "--steps"), default=300, help="Adam steps for every variant "
                   "(default 300)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate for every variant (default 1e-3)")
    p.add_argument("--seeds", type=at_least(1, "--seeds"), default=3,
                   help="repeats with other labelled images and inits, seeds --seed, --seed + 1, ... (default 3)")


def _bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-root", metavar="DIR", default="data", help="where MNIST was downloaded (--dataset mnist; "
                   "default: data)")
    device_option(p, default="cpu")
    p.add_argument("--cases", nargs="+", metavar="CASE", default=None,
                   help="which cases (default: all; names as in the table, e.g. mlp-vae-128)")
    p.add_argument("--epochs", type=at_least(1, "--epochs"), default=3, help="timed epochs per path, after one "
                   "warm-up epoch")
    p.add_argument("--repeat", type=at_least(1, "--repeat"), default=8, help="digits only: tile the training "
                   "split this often")
    p.add_argument("--aecli", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for aecli's side, e.g. trainer.compile=true optim.fused=false")
    p.add_argument("--startup-runs", type=at_least(0, "--startup-runs"), default=3,
                   help="0: skip the startup measurement")
    p.add_argument("--hog", type=at_least(0, "--hog"), default=0, metavar="N",
                   help="then the same comparison with N busy-loop processes beside it (a loaded machine)")


COMMANDS = (
    Command("train", "train a model (the Hydra app: group=option key=value ...; aecli train --help lists them)",
            ("aecli train model=vae device=cuda", "aecli train -m model=ae,dae,conv,vae",
             "aecli train experiment=mnist_vae"), module="aecli.training.app"),
    Command("evaluate", "measure runs on their test split: reconstruction, SSIM, likelihood, denoising, probes",
            ("aecli evaluate outputs/2026-01-01/12-00-00-123456",
             "aecli evaluate multirun/2026-01-01/12-00-00-123456   # every job of a sweep, one table",
             "aecli evaluate RUN_A RUN_B --noise binomial:0.25 --out results/"),
            _evaluate, lambda: [run_options(many=True), data_options(), seed_options("the noise and the VAE's "
                                "samples"), noise_options("the corruption for the denoising PSNRs")]),
    Command("report", "a sweep's jobs in one table (markdown, CSV) and one plot",
            ("aecli report multirun/2026-01-01/12-00-00-123456", "aecli report SWEEP_DIR --sort=-test/psnr_db"),
            _report),
    Command("encode", "every image's code and label, as one .npz and in TensorBoard's projector",
            ("aecli encode RUN", "aecli encode RUN --split all --out codes/",
             "tensorboard --logdir RUN   # then the PROJECTOR tab"),
            _encode, lambda: [run_options(), data_options()]),
    Command("map", "the test split's codes in 2-D, coloured by label: a PNG and a TensorBoard figure",
            ("aecli map RUN", "aecli map RUN --method tsne --seed 1", "aecli map RUN --method code   # latent_dim=2"),
            _map, lambda: [run_options(), data_options(), seed_options("PCA's solver and of t-SNE")]),
    Command("search", "similar-image search by code (cosine similarity), or its precision@k",
            ("aecli search RUN --query 42 --k 8", "aecli search RUN --query-text 'neural networks for text'",
             "aecli search RUN --measure --k 8"),
            _search, lambda: [run_options(), data_options(), seed_options("the PCA baseline of --measure")],
            check=_check_search),
    Command("denoise", "denoise your own images, or measure denoising on the corrupted test split",
            ("aecli denoise RUN my_scans/ cleaned/", "aecli denoise RUN --synthetic",
             "aecli denoise RUN --synthetic --noise gaussian:0.3"),
            _denoise, lambda: [run_options(), data_options(), seed_options("the synthetic corruption"),
                               noise_options("the noise --synthetic applies")], check=_check_denoise),
    Command("sample", "new images: prior samples (VAE), interpolations (any model), the 2-D manifold (VAE)",
            ("aecli sample RUN --n 64", "aecli sample RUN --interpolate 3 7 --steps 10",
             "aecli sample RUN --manifold --side 20"),
            _sample, lambda: [run_options(), data_options(), seed_options("the prior draws")], check=_check_sample),
    Command("score", "anomaly scores: each image's reconstruction error, as a CSV",
            ("aecli score RUN test", "aecli score RUN incoming/ --out scores/"),
            _score, lambda: [run_options(), data_options()], check=_check_score),
    Command("finetune", "few labels: the pre-trained encoder + a linear head vs the same network from scratch",
            ("aecli finetune RUN", "aecli finetune RUN --labels-per-class 1 --seeds 10"),
            _finetune, lambda: [run_options(), data_options(), seed_options("the first repeat")]),
    Command("bench", "time aecli's training step against a plain PyTorch loop",
            ("aecli bench", "aecli bench --hog 2   # also beside two busy-loop processes",
             "aecli bench --cases mlp-vae-128 --aecli trainer.compile=true"),
            _bench, module="aecli.training.bench"),
)
BY_NAME = {c.name: c for c in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """``aecli`` and one subparser per command."""
    p = argparse.ArgumentParser(prog="aecli", description="Train, compare and reuse the classic autoencoders.",
                                epilog="examples:\n" + "\n".join(f"  {c.examples[0]}" for c in COMMANDS)
                                + "\n\naecli COMMAND --help: that command's options and examples",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.help[0].upper() + c.help[1:] + ".",
                            epilog="examples:\n" + "\n".join(f"  {e}" for e in c.examples),
                            parents=c.parents(), formatter_class=argparse.RawDescriptionHelpFormatter,
                            add_help=c.name != "train")
        c.options(sp)
    return p


# --- checks before any import of torch ------------------------------------------------------

def check(args: argparse.Namespace) -> None:
    """The cheap checks: --noise's grammar and bounds, that RUN and --data-root exist, and the
    command's own. Turns ``args.noise`` into a ``NoiseOption``."""
    if getattr(args, "noise", None) is not None:
        args.noise = noise_option(args.noise)
    expand_paths(args)
    runs = getattr(args, "run", None)
    if isinstance(runs, str):
        rundir.check_trained(runs)
    for run in runs if isinstance(runs, list) else []:  # evaluate's RUN...: run or multirun dirs
        if not Path(run).exists():
            raise ConfigError("RUN", f"{run} does not exist", "pass the dir that aecli train printed ('run dir: ...'), "
                              "or a sweep's dir")
    root = getattr(args, "data_root", None)
    if root is not None and args.command != "bench" and not Path(root).is_dir():
        raise ConfigError("--data-root", f"{root} is no folder", "pass the folder where the run's dataset lies now")
    BY_NAME[args.command].check(args)


PATH_ARGS = ("run", "out", "data_root", "input_dir", "output_dir", "input", "query", "sweep_dir")


def expand_paths(args: argparse.Namespace) -> None:
    """``~`` expanded in every path argument (a quoted ``'~/runs/x'`` reaches aecli unexpanded),
    keeping each one's type (str or Path); ``test`` and a numeric ``--query`` are no paths but
    pass through unchanged."""
    def expand(value: Any) -> Any:
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, (str, Path)) and str(value).startswith("~"):
            return type(value)(Path(value).expanduser())
        return value
    for name in PATH_ARGS:
        if hasattr(args, name):
            setattr(args, name, expand(getattr(args, name)))


def train(argv: Sequence[str]) -> int:
    """``aecli train ARGS``: the Hydra app with ARGS, exactly as ``python -m aecli.train ARGS``."""
    # imported here, not at the top: Hydra and the app cost ~0.2 s that no other command needs
    from aecli.training import app

    saved, sys.argv = sys.argv, [sys.argv[0], *argv]  # Hydra reads its overrides from sys.argv
    try:
        app.main()
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``aecli``: 0, 1 with one ``aecli: error: KEY: ...`` message (argparse's usage errors: 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return train(argv[1:])
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # tab completion (argcomplete) answers and exits here
        import argcomplete

        argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
        check(args)
        command = BY_NAME[args.command]
        # the one import of torch and the rest: a function-local import, so that --help, tab
        # completion and the refusals above answer in ~0.5 s instead of ~5 s (measured on 2 busy
        # CPU cores: aecli evaluate --help, aecli map MISSING_DIR)
        module = importlib.import_module(command.module or f"aecli.use.{command.name}")
        quiet_disk_errors_in_writer_threads()
        module.recipe(args)
    except (AecliError, OSError) as e:  # OSError: a full disk is one message too (anything else: re-raised)
        return failure_message(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
