"""The checkpoint file: written atomically, read as data only, verified before use.

A checkpoint is a plain dict of tensors and built-in types (the resolved config travels as
plain data) in torch's zip format. Reading it:

- ``torch.load(weights_only=True)``: no pickled code runs;
- every zip member's CRC-32 is checked first (torch does not check them), so a flipped byte in
  the tensor data is refused instead of coming back as a weight of -3e35;
- its keys and types are checked (``validate``) before anything uses them;
- its config is never instantiated as it is: every ``_target_`` in it must be one of aecli's
  own (``allowed_targets``) or one this process was given (``check_targets``).
"""
from __future__ import annotations

import io
import logging
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from aecli import config
from aecli.errors import ConfigError, RunFailed
from aecli.store.atomic import atomic_write

log = logging.getLogger(__name__)

FORMAT = "aecli-checkpoint-2"
LAST, BEST = "last.pt", "best.pt"
MAX_BYTES = 16 * 2**30  # larger files are refused unread
ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of torch's zip format

def allowed_targets() -> dict[str, set[str]]:
    """What a checkpoint's config may name, by group: every ``_target_`` of aecli's schemas."""
    return config.targets()


# --- writing ---------------------------------------------------------------------------------


def save(state: dict[str, Any], *paths: Path) -> None:
    """Write a checkpoint atomically to each of ``paths`` (serialized once; last.pt and best.pt
    hold the same bytes); a failure is a ``RunFailed`` naming the file and the free space, and
    leaves the previous checkpoint there intact."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    data = buffer.getvalue()
    for path in map(Path, paths):
        try:
            atomic_write(path, lambda f: f.write(data), fix="free disk space or fix the dir's permissions, then "
                         f"continue with resume={path.parent.parent}")
        except RunFailed as e:
            kept = "; the previous checkpoint there is intact" if path.is_file() else ""
            raise RunFailed("hydra.run.dir", f"{e.key}: {e.problem}{kept}", e.fix) from None


# --- reading ---------------------------------------------------------------------------------

def find(path: str | Path, name: str = LAST) -> Path:
    """``path`` itself if it is a file, else ``path/checkpoints/<name>`` of a run dir."""
    p = Path(path).expanduser()
    return p if p.is_file() else p / "checkpoints" / name


def other_checkpoint(file: Path) -> str:
    """The fix for a broken checkpoint file: the run's other one (never the broken file itself)."""
    if file.name == BEST:
        return (f"use the last checkpoint instead (--checkpoint last; {file.with_name(LAST)}), or train again "
                "in a new run dir to recover the best model")
    if file.name == LAST:
        return f"use the best checkpoint instead (--checkpoint best; {file.with_name(BEST)}), or start a new run"
    return "use another checkpoint of the run (checkpoints/best.pt or checkpoints/last.pt), or start a new run"


def read(path: str | Path, key: str = "resume", name: str = LAST) -> dict[str, Any]:
    """Load a checkpoint file (or a run dir's ``checkpoints/<name>``) and verify it: CRCs,
    aecli's marker, keys and types. Any problem is one ``ConfigError`` naming ``key`` and the file."""
    file = find(path, name)
    if not file.is_file():
        given = Path(path).expanduser()
        where = f"no checkpoint at {file}" if given.exists() else f"{given} does not exist"
        raise ConfigError(key, where, "pass a run dir holding checkpoints/last.pt, or a .pt file")
    data = _read_bounded(file, key)  # one read: what is checked is what is loaded
    if not data.startswith(ZIP_MAGIC):  # zipfile and torch skip bytes before the archive: a damaged file
        raise ConfigError(key, f"{file} is not a checkpoint (it does not start as torch's zip format does: "
                          "damaged, or another kind of file)", "use another checkpoint (e.g. checkpoints/best.pt) "
                          "or start a new run")
    try:
        bad = zipfile.ZipFile(io.BytesIO(data)).testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise ConfigError(key, f"{file} is not a checkpoint (not a whole file in torch's zip format: truncated, "
                          "or another kind of file)", other_checkpoint(file)) from None
    if bad is not None:
        raise ConfigError(key, f"{file} is damaged (CRC mismatch in {bad}: its bytes changed after it was written)",
                          other_checkpoint(file))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: not the user's concern
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # refused by the weights-only unpickler: never loaded another way
        if "weights only" not in str(e).lower():  # a damaged pickle, not a refused object
            raise ConfigError(key, f"{file} is not a readable checkpoint (its data is damaged)",
                              "use another checkpoint (e.g. checkpoints/best.pt) or start a new run") from None
        raise ConfigError(key, f"{file} holds objects other than tensors and plain data (loading them could run "
                          "code), so it is refused", "use a checkpoint written by aecli") from None
    except Exception as e:  # noqa: BLE001 - a zip that is no torch file
        raise ConfigError(key, f"{file} is not a readable checkpoint ({type(e).__name__})",
                          other_checkpoint(file)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        older = f" (format {found!r}: an older aecli wrote it)" if isinstance(found, str) else ""
        raise ConfigError(key, f"{file} is not an aecli checkpoint{older or f' (no {FORMAT!r} marker)'}",
                          "pass a checkpoint written by this version of aecli")
    problem = validate(state)
    if problem:
        raise ConfigError(key, f"{file} is not a valid checkpoint: {problem}",
                          other_checkpoint(file))
    return state


def _read_bounded(file: Path, key: str) -> bytes:
    """The file's bytes, after its size was checked against ``MAX_BYTES`` and the free memory (a
    40 GB sparse file is refused in a line, not read into a MemoryError)."""
    size = file.stat().st_size
    available = _available_memory()
    limit = (f"the {MAX_BYTES / 2**30:.0f} GB a checkpoint may have" if size > MAX_BYTES else
             f"the {available / 2**30:.1f} GB of free memory" if available is not None and size > available else None)
    if limit is not None:
        raise ConfigError(key, f"{file} is {size / 2**30:.1f} GB, more than {limit}: not read",
                          "use another checkpoint (e.g. checkpoints/best.pt); aecli's checkpoints are far smaller")
    try:
        return file.read_bytes()
    except OSError as e:
        raise ConfigError(key, f"{file} cannot be read ({e.strerror or e})", "fix its permissions, or use "
                          "another checkpoint") from None


def _available_memory() -> int | None:
    """Linux's MemAvailable in bytes (None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


# --- what a checkpoint must hold -------------------------------------------------------------

def _tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _dict_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


def _rng(v: Any) -> bool:
    if not isinstance(v, dict) or not {"python", "numpy", "torch"} <= set(v):
        return False
    py, np_state, torch_state = v["python"], v["numpy"], v["torch"]
    return (isinstance(py, (tuple, list)) and len(py) == 3 and isinstance(py[1], (tuple, list))
            and all(_int(i) for i in py[1])
            and isinstance(np_state, (tuple, list)) and len(np_state) == 5 and _tensor(np_state[1])
            and _tensor(torch_state) and torch_state.dtype == torch.uint8
            and (("cuda" not in v) or (isinstance(v["cuda"], (list, tuple)) and all(map(_tensor, v["cuda"])))))


def _epoch_state(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and _tensor(v.get("perm")) and v["perm"].dtype == torch.long
                         and v["perm"].dim() == 1
                         and all(_int(v.get(k)) and v[k] >= 0 for k in ("batch", "seen", "skipped"))
                         and _dict_of(_tensor)(v.get("sums")))


SCHEMA: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_dict_of(_tensor), "a dict of tensors"),
    "optimizer": (lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v), "an optimizer state"),
    "scaler": (lambda v: isinstance(v, dict), "a dict"),
    "phase": (lambda v: _int(v) and v >= 0, "a whole number >= 0"),
    "epoch": (lambda v: _int(v) and v >= 0, "a whole number >= 0"),
    "step": (lambda v: _int(v) and v >= 0, "a whole number >= 0"),
    "epoch_state": (_epoch_state, "null or a partial epoch (perm, batch, seen, sums, skipped)"),
    "val": (_dict_of(_number), "a dict of numbers"),
    "best_val": (_number, "a number"),
    "best_step": (lambda v: v is None or _int(v), "null or a step"),
    "rng": (_rng, "the RNG states (python, numpy, torch)"),
    "hooks": (lambda v: isinstance(v, dict), "a dict"),
    "input_shape": (lambda v: isinstance(v, (list, tuple)) and len(v) in (1, 3) and all(_int(s) and s > 0 for s in v),
                    "[channels, height, width] or [features]"),
    "config": (lambda v: isinstance(v, dict) and isinstance(v.get("model"), dict), "the run's config"),
}


def validate(state: dict[str, Any]) -> str | None:
    """What is missing or ill-typed in a loaded checkpoint (None: nothing)."""
    for key, (ok, what) in SCHEMA.items():
        if key not in state:
            return f"'{key}' is missing"
        if not ok(state[key]):
            return f"'{key}' is not {what}"
    if state.get("data_transform") is not None and not isinstance(state["data_transform"], dict):
        return "'data_transform' is not a fitted transform (plain data)"  # a table's scaler, a vocabulary
    if "rng_ranks" in state and not (isinstance(state["rng_ranks"], list) and all(map(_rng, state["rng_ranks"]))):
        return "'rng_ranks' is not a list of RNG states"  # DDP: one per rank
    return None


# --- configs from files: data, never code ----------------------------------------------------

def check_targets(config: dict[str, Any], trusted: Iterable[str] | Mapping[str, Iterable[str]] = (),
                  source: str = "the checkpoint", key: str = "resume") -> None:
    """Refuse a stored config that would make ``instantiate`` run anything but aecli's own
    classes of that group or the ``trusted`` targets (those this process's own config names, by
    group when a mapping: a model may not name a dataset loader): a ``_target_`` may sit only at
    the root of the model, noise, loss and dataset groups, no value may be an interpolation, and
    no other Hydra instantiate key may appear anywhere."""
    def trusted_in(group: str) -> set[str]:
        return set(trusted.get(group, ())) if isinstance(trusted, Mapping) else set(trusted)
    allowed_by_group = allowed_targets()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                full = f"{path}.{k}" if path else str(k)
                if isinstance(k, str) and k.startswith("_") and not (k == "_target_" and path in allowed_by_group):
                    raise ConfigError(key, f"{source} sets {full}, which would make aecli run code named in a file",
                                      "use a checkpoint written by aecli from a config you trust")
                walk(v, full)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise ConfigError(key, f"{source} has an interpolation at {path} ({node[:60]!r})",
                              "use a checkpoint written by aecli")
        elif node is not None and not isinstance(node, (str, int, float, bool)):
            raise ConfigError(key, f"{source} has a {type(node).__name__} at {path}",
                              "use a checkpoint written by aecli")

    walk({k: v for k, v in config.items() if k != "callbacks"}, "")
    for group, allowed in allowed_by_group.items():
        target = (config.get(group) or {}).get("_target_") if isinstance(config.get(group), dict) else None
        if target is not None and target not in allowed | trusted_in(group):
            raise ConfigError(key, f"{source} names {group}._target_={target}, which is not one of aecli's own",
                              f"if you trust it, name it yourself: {group}._target_={target} on the command line "
                              "(or trusted_targets=... in Python)")


def load_model(path: str | Path, name: str = BEST, trusted_targets: Iterable[str] = ()) -> torch.nn.Module:
    """Rebuild a trained model from a run dir (its ``checkpoints/<name>``) or a checkpoint file,
    in eval mode. Nothing in the file runs: the model class comes from aecli's registry (or
    ``trusted_targets``), its arguments must be plain values. If ``best.pt`` is older than the best
    model that ``last.pt`` records (a crash between the two writes), the best model is taken from
    ``last.pt`` and a warning says so.

    >>> model = load_model("outputs/2026-11-24/10-00-00-123456")   # doctest: +SKIP
    """
    file = find(path, name)
    state = best_state(file, key="path")[0] if file.name == BEST else read(file, key="path")
    return build_model(state, trusted_targets)


def best_state(file: Path, key: str) -> tuple[dict[str, Any], Path]:
    """The verified checkpoint of the best model: ``best.pt`` (``file``), or ``last.pt`` next to
    it when that records the best model as its own and best.pt is older or missing (best.pt is
    written right after last.pt: a crash between the two), with a warning. Never another model:
    a best.pt that is missing, damaged or not the step last.pt names is a ``ConfigError``."""
    last_file = file.parent / LAST
    if not last_file.is_file():
        return read(file, key=key), file
    last = read(last_file, key=key)
    if not file.is_file() and last["best_step"] in (None, last["step"]):  # none validated yet, or a crash
        log.warning("%s is missing; using %s (step %d), %s", file, last_file, last["step"],
                    "the best model" if last["best_step"] is not None else "no model was validated yet")
        return last, last_file
    if not file.is_file():
        raise ConfigError(key, f"{file} is missing, and {last_file} holds step {last['step']}, not the best "
                          f"model (step {last['best_step']})", other_checkpoint(file))
    best = read(file, key=key)
    if last["best_step"] == last["step"] and best["step"] != last["step"]:
        log.warning("%s is older than the best model, which %s holds (step %d): using that one",
                    file, last_file, last["step"])
        return last, last_file
    if last["best_step"] is not None and best["step"] != last["best_step"]:  # never another model as the best
        raise ConfigError(key, f"{file} holds the model of step {best['step']}, but the best model is step "
                          f"{last['best_step']}'s (as {last_file} records)", other_checkpoint(file))
    return best, file


def build_model(state: dict[str, Any], trusted_targets: Iterable[str] = ()) -> torch.nn.Module:
    """The model of a verified checkpoint ``state``, weights loaded, in eval mode."""
    from hydra.utils import get_class

    check_targets(state["config"], trusted_targets, key="path")  # a file naming code anywhere is suspect
    check_model_shapes(state, key="path")
    cfg = dict(state["config"]["model"])
    target = cfg.pop("_target_")
    try:
        model = get_class(target)(input_shape=tuple(state["input_shape"]), **cfg)
        model.load_state_dict(state["model"])
    except Exception as e:  # noqa: BLE001 - arguments or weights that do not fit this version's class
        why = " ".join(str(e).split())[:300]
        raise ConfigError("path", f"the checkpoint's model ({target}) cannot be rebuilt: {why}",
                          "use the aecli version that wrote it") from None
    return model.eval()


def check_model_shapes(state: dict[str, Any], key: str = "resume") -> None:
    """Refuse a checkpoint whose model config does not fit its stored weights, before any memory
    is allocated for the model: the model is built on torch's ``meta`` device (shapes only), so
    ``model.hidden_dims=[2000000]`` in a crafted file costs nothing. Call after ``check_targets``."""
    from hydra.utils import get_class

    cfg = dict(state["config"]["model"])
    target = cfg.pop("_target_", None)
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in
                        get_class(target)(input_shape=tuple(state["input_shape"]), **cfg).state_dict().items()}
    except Exception as e:  # noqa: BLE001 - arguments that do not fit this version's class
        why = " ".join(str(e).split())[:300]
        raise ConfigError(key, f"the checkpoint's model ({target}) cannot be rebuilt: {why}",
                          "use the aecli version that wrote it") from None
    stored = {k: tuple(v.shape) for k, v in state["model"].items()}
    if expected != stored:
        diff = sorted(set(expected) ^ set(stored)) or [k for k in expected if expected[k] != stored[k]]
        k = diff[0]
        raise ConfigError(key, f"the checkpoint's model config ({target}) does not fit its weights: {k} is "
                          f"{expected.get(k, 'absent')} by the config, {stored.get(k, 'absent')} in the file "
                          f"({len(diff)} tensor(s) differ)", "use another checkpoint (e.g. checkpoints/best.pt): "
                          "this one was changed after it was written")
