"""The typed config schema, and every check Hydra's types cannot express, in one place.

The dataclasses below are registered in Hydra's ConfigStore (``register()``; ``aecli.conf``
calls it on import) and are the base of ``conf/train.yaml`` and of each group option that
has a fixed set of keys, so a wrong type or an unknown key (``+trainer.epoch=5``, a typo in an
experiment file) is refused while Hydra composes the config, with the closest key as the fix.
Each key's default and range are declared once, on its field (``bounded`` / ``sizes``, from
``aecli.declare``): ``check(cfg)`` checks the ranges from there, as do the commands' flags
(``bounds``); the models take their ``__init__`` defaults from here; the checkpoint allow-list is
``targets()``; docs/configuration.md's key table is ``key_table()``. ``check`` also checks the
cross-field rules. Both report in the ``aecli: error: KEY: what; fix: how`` form
(``explain`` turns Hydra's and OmegaConf's composition errors into it). No torch import here.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from aecli.declare import Bound, bound_of, bounded, sizes
from aecli.errors import ConfigError

# --- choice keys ---------------------------------------------------------------------------

class OnNan(Enum):
    stop = "stop"  # stop the run, keeping the last good checkpoint
    skip_batch = "skip_batch"  # skip batches whose loss is not finite


class OnBadImage(Enum):
    skip = "skip"  # leave unreadable image files out, naming them in a warning
    fail = "fail"  # refuse the dataset, naming them


class Progress(Enum):
    auto = "auto"  # a bar on a terminal, one log line per epoch otherwise
    bar = "bar"
    log = "log"


class Precision(Enum):
    """``trainer.precision``: 32 (fp32), bf16 or 16 (fp16 with a GradScaler)."""

    fp32 = 32
    bf16 = "bf16"
    fp16 = 16


class Sparsity(Enum):
    l1 = "l1"  # an L1 penalty on ReLU codes
    kl = "kl"  # KL(target || mean activation) per unit of sigmoid codes (Ng's sparse autoencoder)


class KLSchedule(Enum):
    constant = "constant"  # beta from the first step
    linear = "linear"  # beta x min(1, step / kl_warmup_steps): a warm-up
    cyclical = "cyclical"  # the warm-up again every kl_cycle_steps (Fu et al. 2019)


class DeviceName(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


def value(choice: Any) -> Any:
    """A choice key's plain value (an Enum member's value; anything else as it is)."""
    return choice.value if isinstance(choice, Enum) else choice


# --- the schema ----------------------------------------------------------------------------

@dataclass
class OptimConfig:
    """Adam."""

    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    fused: Any = "auto"  # auto | true | false


@dataclass
class TrainerConfig:
    epochs: int = bounded(10, ge=1)
    max_steps: int | None = bounded(None, ge=1, example=1000, null="no limit")
    batch_size: int = bounded(128, ge=1)
    eval_batch_size: int = bounded(1024, ge=1)
    log_every_n_steps: int = bounded(50, ge=1)
    checkpoint_every_n_steps: int | None = bounded(None, ge=1, example=500, null="at epoch ends only")
    on_nan: OnNan = OnNan.stop
    progress: Progress = Progress.auto
    grid_images: int = bounded(8, ge=1)
    pack_size: int = bounded(64, ge=1)  # hydra/launcher=packed: the most jobs trained side by side as one
    num_threads: Any = "auto"  # auto | N | null
    precision: Precision = Precision.fp32
    compile: bool = False
    compile_mode: str | None = None  # default | max-autotune | max-autotune-no-cudagraphs
    cuda_graph: Any = "auto"  # auto | true | false
    channels_last: Any = "auto"  # auto | true | false
    cudnn_benchmark: Any = "auto"  # auto | true | false


@dataclass
class DeviceConfig:
    name: DeviceName = DeviceName.auto
    index: int | None = None


@dataclass
class TrainConfig:
    """The top level of ``conf/train.yaml``; the groups' own schemas follow."""

    seed: int = 0
    resume: str | None = None
    objective: str | None = None  # the metrics.json key a run returns to sweepers (null: val/loss_<unit>)
    dataset: Any = MISSING
    noise: Any = MISSING
    loss: Any = MISSING
    model: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)  # name -> {_target_: a Hook class, ...}


@dataclass
class MLPAutoencoderConfig:
    _target_: str = "aecli.models.MLPAutoencoder"
    hidden_dims: list[int] = sizes([256], ge=1)
    latent_dim: int = bounded(16, ge=1)
    latent_activation: bool = False  # ReLU on the code layer (the Keras-blog AE has one)


@dataclass
class ConvAutoencoderConfig:
    _target_: str = "aecli.models.ConvAutoencoder"
    channels: list[int] = sizes([32, 64], ge=1)  # one stride-2 3x3 conv each
    latent_dim: int = bounded(16, ge=1)


@dataclass
class KLConfig:
    """What every VAE's KL term takes: its weight, its schedule over the training steps, free bits."""

    beta: float = bounded(1.0, ge=0)
    kl_schedule: KLSchedule = KLSchedule.constant
    kl_warmup_steps: int = bounded(1000, ge=1)  # linear/cyclical: steps for the weight to rise from 0 to beta
    kl_cycle_steps: int = bounded(4000, ge=1)  # cyclical: steps per cycle (the rise, then beta)
    free_bits: float = bounded(0.0, ge=0)  # nats per code unit the KL is not pushed below (Kingma et al. 2016)


@dataclass
class ConvVAEConfig(KLConfig):
    _target_: str = "aecli.models.ConvVAE"
    # one stride-2 conv + BatchNorm + LeakyReLU each
    channels: list[int] | None = sizes(None, example=[32, 64, 128, 256], ge=1,
                                       null="[32,64,128,256], as many layers as the image size takes")
    latent_dim: int = bounded(128, ge=1)


@dataclass
class VAEConfig(KLConfig):
    _target_: str = "aecli.models.VAE"
    hidden_dims: list[int] = sizes([400], ge=1)
    latent_dim: int = bounded(20, ge=1)


@dataclass
class SparseAutoencoderConfig:
    _target_: str = "aecli.models.SparseAutoencoder"
    hidden_dims: list[int] = sizes([256], ge=1)
    latent_dim: int = bounded(64, ge=1)
    sparsity: Sparsity = Sparsity.l1
    sparsity_weight: float = bounded(0.1, ge=0)  # times the penalty's mean over code units
    target: float = bounded(0.05, gt=0, lt=1)  # kl: the mean activation rho each unit is held to


@dataclass
class ContractiveAutoencoderConfig:
    _target_: str = "aecli.models.ContractiveAutoencoder"
    hidden_dims: list[int] = sizes([], ge=1)  # []: one sigmoid layer (the closed-form penalty)
    latent_dim: int = bounded(64, ge=1)
    contraction_weight: float = bounded(0.01, ge=0)  # times ||d code / d input||_F^2 per image
    projections: int = bounded(1, ge=1)  # deeper encoders: random projections per image of the estimate


@dataclass
class VQConfig:
    """What every VQ-VAE's codebook takes."""

    codebook_size: int = bounded(256, ge=2)  # K codes
    code_dim: int = bounded(16, ge=1)  # D numbers each
    beta: float = bounded(0.25, ge=0)  # the commitment loss's weight
    ema: bool = False  # codebook updates as moving averages of the codes' encoder outputs (no codebook loss)
    decay: float = bounded(0.99, ge=0, lt=1)  # ema: the moving averages' decay
    restarts: bool = True  # codes unused for a while restart at recent encoder outputs


@dataclass
class VQVAEConfig(VQConfig):
    _target_: str = "aecli.models.VQVAE"
    hidden_dims: list[int] = sizes([256], ge=1)
    codes: int = bounded(4, ge=1)  # code vectors per input (latent_dim: codes x code_dim)


@dataclass
class ConvVQVAEConfig(VQConfig):
    _target_: str = "aecli.models.ConvVQVAE"
    channels: list[int] = sizes([32, 64], ge=1)  # one stride-2 3x3 conv each; a code per position of the last map


@dataclass
class StackedAutoencoderConfig:
    _target_: str = "aecli.models.StackedAutoencoder"
    hidden_dims: list[int] = sizes([256, 128], ge=1)
    latent_dim: int = bounded(16, ge=1)
    pretrain_epochs: int = bounded(2, ge=0)  # per layer
    pretrain_noise_levels: list[float] | None = None  # e.g. [0.1, 0.2, 0.3]: noise level (p or sigma) per layer


@dataclass
class NoNoiseConfig:
    _target_: str = "aecli.noise.NoNoise"


@dataclass
class MaskingNoiseConfig:
    _target_: str = "aecli.noise.MaskingNoise"
    p: float = bounded(0.25, ge=0, lt=1)


@dataclass
class GaussianNoiseConfig:
    _target_: str = "aecli.noise.GaussianNoise"
    sigma: float = bounded(0.3, ge=0)
    clip: bool = True


@dataclass
class SquaredErrorConfig:
    _target_: str = "aecli.losses.SquaredError"


@dataclass
class BinaryCrossEntropyConfig:
    _target_: str = "aecli.losses.BinaryCrossEntropy"


@dataclass
class MultinomialConfig:
    _target_: str = "aecli.losses.Multinomial"


@dataclass
class DigitsConfig:
    _target_: str = "aecli.data.load_digits"
    val_fraction: float = bounded(0.1, gt=0, lt=1)
    test_fraction: float = bounded(0.2, gt=0, lt=1)
    split_seed: int = 0  # fixes the train/val/test split, independent of the run's seed
    # e.g. [0,1,2,3,4,5,6,7,8]: train/val keep only these class ids, test keeps all, so
    # python -m aecli.score measures how well the held-out ones stand out
    classes: list[int] | None = None


@dataclass
class TorchvisionConfig:
    _target_: str = "aecli.data.load_torchvision"
    name: str = "mnist"
    root: str = "data"  # shared by all runs
    download: bool = True  # false: fail with a message instead of reaching the internet
    val_fraction: float = bounded(0.1, gt=0, lt=1)  # of the official train split (its test split: the test set)
    split_seed: int = 0
    classes: list[int] | None = None  # train/val keep only these class ids (test keeps all)


@dataclass
class FolderConfig:
    _target_: str = "aecli.data.load_folder"
    # required: dataset.root=/path/to/images (home: dataset.root=$HOME/pictures; Hydra refuses an
    # unquoted ~, quoted it works: 'dataset.root="~/pictures"')
    root: str = MISSING
    image_size: int = bounded(64, ge=1)
    channels: int = 3  # 1: grey, 3: RGB
    val_fraction: float = bounded(0.1, gt=0, lt=1)
    test_fraction: float = bounded(0.1, gt=0, lt=1)
    split_seed: int = 0
    max_memory_mb: float = bounded(2048, ge=0)  # decoded images above this stream from disk
    num_workers: int = bounded(2, ge=0)  # processes that decode the images (the first time), and streamed batches
    on_bad_image: OnBadImage = OnBadImage.skip
    cache: bool = True  # keep the decoded images in root/.aecli-cache/ for the next run
    # e.g. [0,1,2]: train/val keep only these classes (ids: sub-folders in sorted order), test
    # keeps all; python -m aecli.score RUN test measures the held-out ones
    classes: list[int] | None = None


@dataclass
class SamplePatchesConfig:
    _target_: str = "aecli.data.load_sample_patches"
    patch_size: int = bounded(32, ge=1)  # 1 to 213 px (64: the AntixK/PyTorch-VAE CelebA-64 setting)
    patches: int = bounded(6000, ge=3)  # in all, shared by the splits in proportion
    val_fraction: float = bounded(0.1, gt=0, lt=1)
    test_fraction: float = bounded(0.1, gt=0, lt=1)
    split_seed: int = 0  # fixes the blocks of each split and the crops


class Scale(Enum):
    standard = "standard"  # zero mean, unit variance (the train split's)
    minmax = "minmax"  # [0, 1] over the train split's range
    none = "none"


class Missing(Enum):
    refuse = "refuse"  # name the first row and column without a value
    mean = "mean"  # fill with the train split's column mean
    drop = "drop"  # leave those rows out


class Representation(Enum):
    binary = "binary"  # 1 where a word occurs (loss=bce)
    counts = "counts"  # word counts (loss=multinomial)
    tfidf = "tfidf"  # l2-normalised TF-IDF, idf from the train split


@dataclass
class TableConfig:
    _target_: str = "aecli.data.load_table"
    path: str = MISSING  # a .csv, .tsv, .npy or .npz file, one row per item
    label_column: str | None = None  # class labels (left out of the features)
    columns: list[str] | None = None  # the feature columns (null: all but the label)
    drop_columns: list[str] | None = None
    categorical: list[str] | None = None  # string columns to one-hot code (other string columns are refused)
    scale: Scale = Scale.standard  # fitted on the train split, stored in the checkpoint
    missing: Missing = Missing.refuse
    val_fraction: float = bounded(0.1, gt=0, lt=1)
    test_fraction: float = bounded(0.2, gt=0, lt=1)
    split_seed: int = 0
    classes: list[int] | None = None  # train/val keep only these class ids (test keeps all): score's AUC


@dataclass
class TextConfig:
    _target_: str = "aecli.data.load_text"
    path: str = MISSING  # a folder of .txt files (sub-folders: classes), or a CSV / JSONL file
    text_column: str = "text"  # CSV / JSONL: the documents' column
    label_column: str | None = None  # CSV / JSONL: the class labels' column
    vocab_size: int = bounded(2000, ge=1)  # the most frequent words of the train split
    representation: Representation = Representation.counts
    stop_words: bool = True  # leave out scikit-learn's English stop words
    min_df: int = bounded(2, ge=1)  # words in fewer train documents are left out
    val_fraction: float = bounded(0.1, gt=0, lt=1)
    test_fraction: float = bounded(0.2, gt=0, lt=1)
    split_seed: int = 0
    classes: list[int] | None = None


# group -> option -> schema: every class and loader aecli builds, with its keys, defaults and
# ranges. The models read their ``__init__`` defaults from here; the checkpoint allow-list is
# their ``_target_``s (``targets``). Options that only set values (dae, mnist, ...) are YAML.
SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"ae": MLPAutoencoderConfig, "conv": ConvAutoencoderConfig, "vae": VAEConfig,
              "stacked": StackedAutoencoderConfig, "conv_vae": ConvVAEConfig, "sparse": SparseAutoencoderConfig,
              "contractive": ContractiveAutoencoderConfig, "vqvae": VQVAEConfig, "conv_vqvae": ConvVQVAEConfig},
    "noise": {"none": NoNoiseConfig, "binomial": MaskingNoiseConfig, "gaussian": GaussianNoiseConfig},
    "loss": {"mse": SquaredErrorConfig, "bce": BinaryCrossEntropyConfig, "multinomial": MultinomialConfig},
    "dataset": {"digits": DigitsConfig, "torchvision": TorchvisionConfig, "folder": FolderConfig,
                "photos": SamplePatchesConfig, "table": TableConfig, "text": TextConfig},
}


def targets() -> dict[str, set[str]]:
    """Every schema's ``_target_``, by group: what a checkpoint's config may name."""
    return {group: {getattr(schema, "_target_", "") for schema in options.values()}
            for group, options in SCHEMAS.items()}


def register() -> None:
    """Put the schemas into Hydra's ConfigStore: ``train_schema`` (the base of train.yaml) and
    ``schema/<group>/<name>``, which the group options list first in their defaults."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node, package=group)


# --- range and cross-field checks ----------------------------------------------------------

def bounds(key: str) -> Bound | None:
    """The one declared range of a dotted key, e.g. ``bounds("noise.p")`` or
    ``bounds("trainer.epochs")`` (None: the key has no range). A group key is looked up in
    every option of the group (``p`` is a masking noise's, whichever option names it)."""
    group, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    factory = fields[group].default_factory if group in fields else None
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return bound_of(factory, rest)
    return next((b for schema in SCHEMAS.get(group, {}).values() if (b := bound_of(schema, rest))), None)


def _check_sizes(key: str, value: Any, bound: Bound, fix: str) -> None:
    """A list of whole numbers, each in ``bound`` (``aecli.declare.sizes``)."""
    if not OmegaConf.is_list(value) or not all(isinstance(v, int) and not isinstance(v, bool) and bound.ok(v)
                                               for v in value):
        shown = list(value) if OmegaConf.is_list(value) else value
        raise ConfigError(key, f"{shown!r} must be a list of whole numbers {bound.text}", fix)


def key_table() -> str:
    """The table (docs/configuration.md) of every declared key: option, key, default and range, in Markdown
    (``tests/test_declared.py`` checks the page holds it as this prints it)."""
    def shown(f: dataclasses.Field) -> str:
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == MISSING:
            return "required"
        value = value.value if isinstance(value, Enum) else value
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        return f"`{text}`"

    rows = ["| option | key | default | range |", "|---|---|---|---|"]
    sections: list[tuple[str, str, type]] = []
    for f in dataclasses.fields(TrainConfig):
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            sections.append((f.name, f"{f.name}.", f.default_factory))
    sections += [(f"{group}={option}", f"{group}.", SCHEMAS[group][option]) for group in ("model", "noise", "dataset")
                 for option in sorted(SCHEMAS.get(group, {}))]
    for label, prefix, schema in sections:
        assert dataclasses.is_dataclass(schema)  # a group's schema (SCHEMAS, TrainConfig's parts)
        for f in dataclasses.fields(schema):
            if f.name != "_target_":
                bound = f.metadata.get("bound")
                said = (f"each {bound.text}" if bound.each else bound.text) if bound else ""
                rows.append(f"| {label} | `{prefix}{f.name}` | {shown(f)} | {said} |")
    return "\n".join(rows) + "\n"


def _check_ranges(cfg: DictConfig) -> None:
    """Each number against the range its schema declares (``aecli.declare.bounded``)."""
    for group in cfg:
        node = cfg[group] if group != "hydra" else None
        if not isinstance(node, DictConfig):
            continue
        schema = OmegaConf.get_type(node)
        if not dataclasses.is_dataclass(schema):
            continue
        for f in dataclasses.fields(schema):
            bound, value = f.metadata.get("bound"), node.get(f.name)
            if bound is None or value is None:
                continue
            key, fix = f"{group!s}.{f.name}", f"use e.g. {group!s}.{f.name}={bound.example}"
            if bound.each:
                _check_sizes(key, value, bound, fix)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(key, f"{value!r} is not a number", fix)
            if not bound.ok(value):
                raise ConfigError(key, f"{value} is out of range: it must be {bound.text}", fix)


TRI_STATES = ("optim.fused", "trainer.cuda_graph", "trainer.channels_last", "trainer.cudnn_benchmark")


def check(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first unknown key, value out of range, missing value, or
    rule that spans keys. Runs on the composed config, before anything is built or written."""
    _check_unknown_keys(cfg)
    missing = sorted(m for k in cfg if k != "hydra" and OmegaConf.is_config(cfg[k])
                     for m in OmegaConf.missing_keys(cfg[k]))
    if missing:
        raise ConfigError(missing[0], "has no value and needs one",
                          f"pass {missing[0]}=..." + (" (the folder holding your images)"
                                                      if missing[0] == "dataset.root" else ""))
    _check_ranges(cfg)
    classes = OmegaConf.select(cfg, "dataset.classes", default=None)
    if classes is not None and (not OmegaConf.is_list(classes) or not classes
                                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)):
        shown = list(classes) if OmegaConf.is_list(classes) else classes
        raise ConfigError("dataset.classes", f"{shown!r} must be a non-empty list of class ids >= 0",
                          "use e.g. dataset.classes=[0,1,2,3,4,5,6,7,8] (or null: every class)")
    for key in TRI_STATES:
        value = OmegaConf.select(cfg, key, default="auto")
        if value not in ("auto", True, False):
            raise ConfigError(key, f"{value!r} is not auto, true or false", f"use e.g. {key}=auto")
    threads = OmegaConf.select(cfg, "trainer.num_threads", default=None)
    if threads not in (None, "auto") and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError("trainer.num_threads", f"{threads!r} is neither auto nor a whole number >= 1",
                          "use trainer.num_threads=auto (the fastest count, timed) or e.g. trainer.num_threads=4")
    if OmegaConf.select(cfg, "dataset.channels", default=None) not in (None, 1, 3):
        raise ConfigError("dataset.channels", f"{cfg.dataset.channels} is not 1 or 3",
                          "use dataset.channels=1 (grey) or 3 (RGB)")
    mode = OmegaConf.select(cfg, "trainer.compile_mode", default=None)
    if mode == "reduce-overhead":
        raise ConfigError("trainer.compile_mode", "reduce-overhead (torch.compile's CUDA graphs) is retired: it "
                          "crashed on loss terms kept across steps", "use trainer.cuda_graph=true: the whole "
                          "training step as one CUDA graph (README, Speed)")
    if mode not in (None, "default", "max-autotune", "max-autotune-no-cudagraphs"):
        raise ConfigError("trainer.compile_mode", f"{mode!r} is not default, max-autotune or "
                          "max-autotune-no-cudagraphs", "use e.g. trainer.compile_mode=max-autotune")
    _check_pretrain_noise_levels(cfg)


def _check_unknown_keys(node: Any, prefix: str = "") -> None:
    """Hydra adds ``+key=value`` overrides even to typed nodes (it opens them to do so), so a
    misspelt ``+trainer.epoch=5`` would pass silently: refuse keys that the schema lacks."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    known = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    if known is not None and "_target_" in known and node.get("_target_") != getattr(schema, "_target_", None):
        return  # your own class (model._target_=my_pkg.MyAE) takes the keys you add with +key=
    for key in node.keys():
        if prefix == "" and key == "hydra":  # Hydra's own node, checked by Hydra
            continue
        full = f"{prefix}{key!s}"
        if known is not None and key not in known:
            raise _no_such_key(full, known)
        if key != "callbacks" and not (known is None and prefix == ""):
            _check_unknown_keys(node._get_node(key), f"{full}.")


def _no_such_key(full: str, known: set[str]) -> ConfigError:
    """The refusal of an unknown key, with the closest known one as the fix when there is one."""
    parent, _, key = full.rpartition(".")
    prefix = f"{parent}." if parent else ""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return ConfigError(full, f"no such key{f' in {parent}' if parent else ''}"
                       + (f" (did you mean {prefix}{close[0]}?)" if close else ""),
                       f"use {prefix}{close[0]}=..." if close else
                       "check the spelling; python -m aecli.train --cfg job lists every key")


def _check_pretrain_noise_levels(cfg: DictConfig) -> None:
    levels = OmegaConf.select(cfg, "model.pretrain_noise_levels", default=None)
    if levels is None:
        return
    key = "model.pretrain_noise_levels"
    layers = len(OmegaConf.select(cfg, "model.hidden_dims", default=[]) or []) + 1
    if len(levels) != layers:
        raise ConfigError(key, f"{len(levels)} levels for {layers} layers (hidden_dims + latent_dim)",
                          f"give one level per layer, e.g. {key}=[{','.join(['0.1'] * layers)}]")
    noise_keys = set(cfg.noise) - {"_target_"}
    if "p" in noise_keys:
        bad = [v for v in levels if not 0.0 <= v < 1.0]
        if bad:
            raise ConfigError(key, f"{bad[0]} is not a masking probability in [0, 1) (noise is binomial)",
                              f"use levels in [0, 1), e.g. {key}=[0.1,0.2,0.3]")
    elif "sigma" in noise_keys:
        bad = [v for v in levels if v < 0.0]
        if bad:
            raise ConfigError(key, f"{bad[0]} is not a noise std >= 0 (noise is gaussian)",
                              f"use levels >= 0, e.g. {key}=[0.1,0.2,0.3]")
    else:
        raise ConfigError(key, "per-layer noise levels need a noise to scale, but noise has no level "
                          f"({cfg.noise.get('_target_')})",
                          "add noise=binomial or noise=gaussian, or drop model.pretrain_noise_levels")


# --- composition errors, re-worded ---------------------------------------------------------

def explain(error: BaseException) -> ConfigError | None:
    """A ``ConfigError`` for a config mistake that Hydra or OmegaConf found while composing
    (None: not a config mistake). Hydra's own hints ('+key' to append) are replaced: with the
    schema, a key that does not exist cannot be appended either."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    cause = error
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    text = str(error).strip()
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or _key_in(text) or "config"
        first = str(cause).splitlines()[0].strip()
        if "not in" in first or "Key '" in first and "not" in first:
            schema = getattr(cause, "object_type", None)
            if dataclasses.is_dataclass(schema):  # a plain trainer.epoch=5: suggest as for +trainer.epoch=5
                return _no_such_key(key, {f.name for f in dataclasses.fields(schema)})
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            return ConfigError(key, f"no such key{f' in {parent}' if parent else ''}",
                               "check the spelling; python -m aecli.train --cfg job lists every key")
        return ConfigError(key, first, f"give {key} a value of the right type (python -m aecli.train --cfg job "
                           "shows the current ones)")
    if isinstance(error, MissingConfigException):
        missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        listed = text.split("Available options", 1)[-1].split("Config search path", 1)[0]
        options = [line.strip() for line in listed.splitlines()[1:] if line.startswith("\t")] \
            if "Available options" in text else []
        if missing and options:
            group, name = missing.groups()
            return ConfigError(group, f"there is no option {name!r} (options: {', '.join(options)})",
                               f"use e.g. {group}={options[0]} (python -m aecli.train --help lists every group)")
        return ConfigError(_key_in(text) or "config", text.splitlines()[0], "check the group and option names")
    if isinstance(error, OverrideParseException) and _tilde_override(text):
        return _tilde_override(text)
    if isinstance(error, (OverrideParseException, ConfigCompositionException)):
        first = text.splitlines()[0]
        key = _key_in(first) or "command line"
        hint = "quote values with special characters, e.g. 'dataset.root=\"/path/with spaces\"'" \
            if isinstance(error, OverrideParseException) else "check the key and its value"
        return ConfigError(key, first.replace("\n", " "), hint)
    return None


def _tilde_override(text: str) -> ConfigError | None:
    """Hydra's grammar refuses ``~`` in an unquoted value (``dataset.root=~/pictures``; ``~`` is
    its delete sign, ``~key``): the error, with the forms that work."""
    match = re.search(r"Exception:\s+\+*([A-Za-z_][\w.]*)=(\S*~\S*)", text)
    if match is None:
        return None
    key, val = match.groups()
    quoted = f"""quote it for Hydra: '{key}="{val}"'"""
    if not val.startswith("~"):
        return ConfigError(key, f"Hydra's override grammar does not take '~' in an unquoted value ({val})", quoted)
    return ConfigError(key, f"Hydra's override grammar does not take '~' in an unquoted value ({val})",
                       f"let the shell expand it: {key}={val.replace('~', '$HOME', 1)}, or {quoted} "
                       "(aecli expands a leading ~ in paths)")


def _key_in(text: str) -> str | None:
    match = re.search(r"(?:override|key|Key)\s+'?\+*([A-Za-z_][\w.]*)", text)
    return match.group(1) if match else None


def given(node: Any) -> Any:
    """A group's node as its class is built from it: all of it for aecli's own class; for a
    user's own class (``model._target_=my_pkg.MyAE`` on the ae option) only the keys the user
    gave, those the option's schema lacks or that differ from its defaults, so the ae option's
    other keys do not reach a class that never asked for them and its own defaults apply."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if not dataclasses.is_dataclass(schema) or node.get("_target_") == getattr(schema, "_target_", None):
        return node
    values = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)
    # a DictConfig's container is a dict (OmegaConf's stubs give the union of every container)
    assert isinstance(values, dict) and isinstance(defaults, dict)
    return OmegaConf.create({k: v for k, v in values.items() if k == "_target_" or k not in defaults
                             or v != defaults[k]})


def noise_name(noise: Any) -> str:
    """A noise as the command line names it: ``binomial:0.25``, ``gaussian:0.3`` (the kind of the
    config schema whose ``_target_`` built it, and its level)."""
    kind = next((k for k, schema in SCHEMAS["noise"].items()
                 if asdict(schema())["_target_"].rsplit(".", 1)[-1] == type(noise).__name__), type(noise).__name__)
    level = getattr(noise, "level", None)
    return kind if level is None else f"{kind}:{level:g}"


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data (resolved, enums by name, without Hydra's own node; a user's
    own class's group holds only the keys given for it, ``given``)."""
    return {str(k): OmegaConf.to_container(given(cfg[k]), resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg[k])
            else (cfg[k].name if hasattr(cfg[k], "name") and not isinstance(cfg[k], str) else cfg[k])
            for k in cfg if k != "hydra"}


def saved_config(saved: dict[str, Any], key: str = "resume") -> DictConfig:
    """A checkpoint's config (checked with ``checkpoint.check_targets`` first) on the typed schema."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig),
                                 {k: v for k, v in saved.items() if k != "callbacks"})
    except Exception as e:  # noqa: BLE001 - a stored config that does not fit the schema
        raise ConfigError(key, f"the checkpoint's config does not fit this aecli ({str(e).splitlines()[0]})",
                          "use the aecli version that wrote it") from None
    assert isinstance(merged, DictConfig)  # merged onto a structured dataclass: a DictConfig
    return merged
