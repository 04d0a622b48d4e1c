"""The training run behind ``python -m aecli.train``, top to bottom.

setup (device, seed, data, model; resume state) -> phases: [stacked: greedy layer-wise
pre-training, one phase per layer] + the end-to-end training phase, each a number of epochs of
training (+ validation, TensorBoard scalars and image grids, checkpoints) -> test metrics,
``metrics.json`` and HParams.

Batches are sliced from dataset tensors that live on the training device; losses are summed on
the device and read back only when logged. Checkpoints record the exact position (phase, epoch,
batch, the epoch's permutation and partial sums, every RNG), so an interrupted run resumes to
the same result; SIGTERM/SIGINT finish the current step, write one and exit.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from aecli import faults
from aecli.checkpoint import plain_config, resolve_resume, rng_state, save_checkpoint, set_rng_state
from aecli.data import ImageData, batches
from aecli.device import resolve_device
from aecli.errors import ConfigError
from aecli.images import image_grid
from aecli.losses import BCELoss, ReconstructionLoss
from aecli.models import VAE, Autoencoder, ConvAutoencoder, StackedAutoencoder
from aecli.noise import NoNoise, Noise
from aecli.sweep import JobSlot, cores_available, gpu_for_job, threads_per_job

log = logging.getLogger("aecli")


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[group])``, with config mistakes re-worded for the user
    (Hydra's own message hides the cause behind 'see chained exception above')."""
    try:
        return instantiate(cfg[group], **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        target = OmegaConf.select(cfg, f"{group}._target_")
        raise ConfigError(group, f"cannot build {target}: {cause or e}",
                          f"check the keys of conf/{group}/ against {target}'s arguments") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@dataclass
class Phase:
    """One thing being trained: the whole model, or one layer of a stack during pre-training."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    noise: Noise
    tag: str  # TensorBoard prefix
    unit: str  # the loss's reduction, named in every loss tag
    prepare: Callable[[Tensor], Tensor] | None = None  # clean batch -> what the module sees
    epochs: int = 1
    main: bool = True  # the end-to-end phase: validated, imaged, best-checkpointed
    compute: Callable[..., dict[str, Tensor]] | None = None  # module.loss, or a compiled version

    def __post_init__(self) -> None:
        if self.compute is None:
            self.compute = self.module.loss


@dataclass
class Precision:
    """``trainer.precision``: fp32, or autocast to bf16 / fp16 (fp16 with a GradScaler)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None  # None: fp32, no autocast
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))

    @classmethod
    def from_config(cls, value: Any, device: torch.device) -> "Precision":
        name = str(value)
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trainer.precision", f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16",
                              "use trainer.precision=16 or 32")
        if name != "32" and device.type == "cpu":  # measured: README, "Speed"
            log.warning("trainer.precision=%s on the CPU: correct, but no faster than fp32 even where the CPU has "
                        "bf16 units, and up to ~100x slower where it has none (fp16: always)", name)
        dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[name]
        return cls(device.type, dtype, torch.amp.GradScaler(device.type, enabled=name == "16"))

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


@dataclass
class EpochState:
    """Where an epoch stands: enough to checkpoint it mid-way and continue it exactly."""

    perm: Tensor  # this epoch's batch order
    batch: int = 0  # batches done
    seen: int = 0  # images done
    sums: dict[str, Tensor] = field(default_factory=dict)  # loss terms x images, on the device
    skipped: int = 0  # non-finite batches skipped (trainer.on_nan=skip_batch)
    first_bad: Tensor | None = None  # first step with a non-finite loss, -1: none (device scalar)

    def check_finite(self) -> None:
        """Raise ``NonFiniteLoss`` if a step of this epoch had a non-finite loss (one sync)."""
        if self.first_bad is not None and self.first_bad.item() >= 0:
            raise NonFiniteLoss(int(self.first_bad.item()))

    def to_dict(self) -> dict[str, Any]:
        return {"perm": self.perm, "batch": self.batch, "seen": self.seen, "sums": self.sums,
                "skipped": self.skipped}


@dataclass
class EpochResult:
    means: dict[str, float]  # mean loss terms over the epoch's images
    step: int  # global step after the epoch
    images_per_sec: float
    stopped: bool = False  # ended early by ``after_step`` (a stop signal)


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


def make_optimizer(params, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam; ``optim.fused`` (auto: where the device has the kernel) runs the whole update as one
    fused kernel, else ``foreach`` multi-tensor kernels: both beat a Python loop over parameters
    (fused: +5% images/s over foreach for the MLP VAE on the 2-core CPU, README "Speed")."""
    params = list(params)
    kwargs = {"lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay}
    fused = cfg.optim.get("fused", "auto")
    if fused in (True, "auto"):
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except RuntimeError:  # no fused kernel for this device
            if fused is True:
                raise ConfigError("optim.fused", f"no fused Adam kernel on {device.type}",
                                  "use optim.fused=auto or false") from None
    return torch.optim.Adam(params, foreach=True, **kwargs)


def step_function(module: torch.nn.Module, trainer_cfg: DictConfig) -> Callable[..., dict[str, Tensor]]:
    """What a training step runs (the loss, forward included): ``module.loss``, compiled with
    ``torch.compile`` when ``trainer.compile`` says so."""
    if trainer_cfg.compile:
        return torch.compile(module.loss, mode=trainer_cfg.compile_mode)
    return module.loss


def set_memory_layout(model: torch.nn.Module, trainer_cfg: DictConfig,
                      device: torch.device) -> Callable[[Tensor], Tensor] | None:
    """The CUDA layout knobs: ``trainer.cudnn_benchmark`` (cuDNN picks the fastest conv
    algorithms for these fixed shapes) and ``trainer.channels_last`` (auto: conv models on CUDA,
    whose tensor cores want NHWC). Converts ``model`` in place; returns what turns a batch into
    that layout (None: leave batches as they are)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = trainer_cfg.cudnn_benchmark in (True, "auto")
    channels_last = trainer_cfg.channels_last is True or (
        trainer_cfg.channels_last == "auto" and device.type == "cuda" and isinstance(model, ConvAutoencoder))
    if not channels_last:
        return None
    model.to(memory_format=torch.channels_last)
    return lambda x: x.contiguous(memory_format=torch.channels_last)


def train_epoch(
    phase: Phase,
    data: ImageData,
    recon: ReconstructionLoss,
    batch_size: int,
    writer: SummaryWriter | None,
    step: int,
    log_every: int,
    progress: bool,
    desc: str,
    state: EpochState | None = None,
    after_step: Callable[[int, EpochState], bool] | None = None,
    on_nan: str = "stop",
    precision: Precision | None = None,
) -> EpochResult:
    """Train ``phase`` for one pass over the training set (or the rest of the pass ``state``
    describes). ``after_step(step, state)`` runs after every optimizer step; True stops early.
    Per-step scalars go to ``writer`` every ``log_every`` steps (``None``: nothing is logged).

    A non-finite loss raises ``NonFiniteLoss`` (``on_nan="stop"``: noticed on the device and
    reported at the next log step or epoch end, so no sync per step) or skips the batch
    (``"skip_batch"``: needs the loss on the host every step).
    """
    from tqdm.auto import tqdm

    precision = precision or Precision()
    module = phase.module
    module.train()
    device = next(module.parameters()).device
    if state is None:
        state = EpochState(perm=torch.randperm(len(data.train), device=device))
    n_batches = math.ceil(len(state.perm) / batch_size)
    first_bad = state.first_bad = torch.full((), -1, dtype=torch.long, device=device)
    window: dict[str, Tensor] = {}
    window_steps, seen_at_start, stopped = 0, state.seen, False
    bar = tqdm(total=n_batches, initial=state.batch, desc=desc, leave=False, disable=not progress, file=sys.stderr)
    t0 = time.perf_counter()
    for _, raw in batches(data.train, batch_size, state.perm, start=state.batch):
        x = data.as_float(raw)
        if phase.prepare is not None:
            x = phase.prepare(x)
        with precision.autocast():
            terms = phase.compute(phase.noise(x), x, recon)
        loss = terms["loss"]
        step += 1
        state.batch += 1
        if on_nan == "skip_batch" and not torch.isfinite(loss).item():
            state.skipped += 1
            log.warning("step %d: non-finite loss, batch skipped (trainer.on_nan=skip_batch)", step)
        else:
            phase.optimizer.zero_grad(set_to_none=True)
            precision.scaler.scale(loss).backward()
            precision.scaler.step(phase.optimizer)
            precision.scaler.update()
            n = x.shape[0]
            for k, v in terms.items():
                v = v.detach()
                state.sums[k] = state.sums[k] + v * n if k in state.sums else v * n
                window[k] = window[k] + v if k in window else v
            state.seen += n
            window_steps += 1
            if on_nan == "stop":  # remember the first bad step on the device, without a sync
                first_bad.copy_(torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()),
                                            torch.full_like(first_bad, step), first_bad))
        if step % log_every == 0 or state.batch == n_batches:  # the only host syncs in an epoch
            try:
                state.check_finite()
            except NonFiniteLoss:
                bar.close()
                raise
            if writer is not None and window_steps and step % log_every == 0:
                values = {k: v.item() / window_steps for k, v in window.items()}
                for k, v in values.items():
                    writer.add_scalar(f"{phase.tag}_step/{k}_{phase.unit}", v, step)
                bar.set_postfix(loss=f"{values['loss']:.4g}",
                                img_s=f"{(state.seen - seen_at_start) / (time.perf_counter() - t0):,.0f}")
                window, window_steps = {}, 0
        bar.update(1)
        if after_step is not None and after_step(step, state):
            stopped = state.batch < n_batches
            break
    means = {k: v.item() / max(state.seen, 1) for k, v in state.sums.items()}  # syncs: honest timing
    elapsed = time.perf_counter() - t0
    bar.close()
    return EpochResult(means, step, (state.seen - seen_at_start) / max(elapsed, 1e-9), stopped)


@torch.no_grad()
def evaluate(model: Autoencoder, data: ImageData, raw: Tensor, recon: ReconstructionLoss,
             batch_size: int) -> dict[str, float]:
    """Mean loss terms (training units), per-pixel MSE of the reconstruction, PSNR (dB, data
    range 1), and for a VAE trained with BCE the negative ELBO in nats per image."""
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    squared_error = torch.zeros((), device=device)
    for _, b in batches(raw, batch_size, torch.arange(len(raw), device=device)):
        x = data.as_float(b)
        for k, v in model.loss(x, x, recon).items():
            sums[k] = sums[k] + v * x.shape[0] if k in sums else v * x.shape[0]
        # the reconstruction a user means: decode the code (a VAE's mean code, no sampling)
        squared_error += (recon.output(model.decode(model.encode(x))) - x).pow(2).sum()
    model.train()
    n = len(raw)
    unit = model.loss_unit
    out = {f"{k}_{unit}": v.item() / n for k, v in sums.items()}
    mse = squared_error.item() / math.prod(raw.shape[1:]) / n
    out["mse_per_pixel"] = mse
    out["psnr_db"] = 10.0 * math.log10(1.0 / max(mse, 1e-12))
    if isinstance(model, VAE) and isinstance(recon, BCELoss):
        out["neg_elbo_nats_per_image"] = out["recon_per_image"] + out["kl_per_image"]
    return out


def hparams_of(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """Flat scalar hyperparameters for TensorBoard's HParams tab."""
    flat: dict[str, Any] = {f"choice/{k}": v for k, v in choices.items()}
    container = OmegaConf.to_container(cfg, resolve=True)

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "_target_":
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix] = node
        else:
            flat[prefix] = str(node)

    walk("", {k: container[k] for k in ("model", "noise", "optim", "trainer", "seed") if k in container})
    return flat


class StopSignals:
    """SIGTERM / SIGINT ask the run to stop after the current step (``requested`` holds the
    signal); a second SIGINT exits at once. Previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            os._exit(128 + signum)  # the impatient second Ctrl-C
        self.requested = signum
        log.warning("%s received: stopping after this step (Ctrl-C again to exit at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. a thread-based launcher): no handlers
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def place_job(cfg: DictConfig, slot: JobSlot) -> torch.device:
    """Thread count and device for this job of a sweep (``aecli.sweep``), both logged."""
    cores = cores_available()
    threads = threads_per_job(cfg.trainer.get("num_threads"), cores, slot.jobs_at_once)
    if threads is not None:
        torch.set_num_threads(threads)
    log.info("torch threads: %d (trainer.num_threads=%s; %d cores, %d job(s) at once, %s launcher)",
             torch.get_num_threads(), cfg.trainer.get("num_threads"), cores, slot.jobs_at_once, slot.launcher)
    gpus = torch.cuda.device_count() if cfg.device.name in ("auto", "cuda") else 0
    return resolve_device(cfg.device.name, gpu_for_job(cfg.device.get("index"), slot.num, gpus))


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None, slot: JobSlot = JobSlot()) -> float:
    """Train as ``cfg`` says, writing everything into ``run_dir``; return the final val loss.
    ``slot`` places a sweep's job (threads, GPU); the default is a run alone on the machine."""
    run_dir = Path(run_dir)
    resume = resolve_resume(cfg.get("resume"), run_dir, plain_config(cfg))
    device = place_job(cfg, slot)
    seed_everything(cfg.seed)

    data: ImageData = build(cfg, "dataset")
    recon: ReconstructionLoss = build(cfg, "loss")
    top = float(data.train.max()) / data.max_value if not data.streamed else 1.0  # files: uint8/255
    if isinstance(recon, BCELoss) and top > 1.0:
        raise ConfigError("loss", f"loss=bce needs data in [0, 1], but this dataset reaches {top:.3g}",
                          "use loss=mse, or a dataset whose pixels lie in [0, 1]")
    data = data.to(device)
    model: Autoencoder = build(cfg, "model", input_shape=data.shape).to(device)
    noise: Noise = build(cfg, "noise")
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError as e:  # shapes that the config check could not see (a custom model)
            raise ConfigError("resume", f"the checkpoint does not fit this model: {str(e)[:300]}",
                              "resume with the config of the run that wrote the checkpoint") from None
    tc = cfg.trainer
    precision = Precision.from_config(tc.precision, device)
    to_layout = set_memory_layout(model, tc, device)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".*.tmp"):  # half-written by a process that was killed mid-write
        stale.unlink()
    progress = tc.progress == "bar" or (tc.progress == "auto" and sys.stderr.isatty())
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s (%s parameters) on %s; data %s: %d train / %d val / %d test; noise %r; loss %s",
             type(model).__name__, f"{n_params:,}", device, "x".join(map(str, data.shape)),
             len(data.train), len(data.val), len(data.test), noise, recon.name)

    # A fixed validation batch (and its corruption, drawn once) for the image grids.
    grid_clean = data.as_float(data.val[: tc.grid_images].to(device))
    grid_noisy = noise(grid_clean.clone())
    prior_z = torch.randn(16, model.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device) \
        if isinstance(model, VAE) else None

    # The phases: greedy pre-training of each layer of a stack, then end-to-end training.
    phases: list[Phase] = []
    if isinstance(model, StackedAutoencoder):
        for stage, stage_noise in model.stages(noise):
            phases.append(Phase(stage, make_optimizer(stage.parameters(), cfg, device), stage_noise,
                                tag=f"pretrain/layer{stage.k}", unit=stage.loss_unit, prepare=stage.inputs,
                                epochs=model.pretrain_epochs, main=False))
    unit = model.loss_unit
    phases.append(Phase(model, make_optimizer(model.parameters(), cfg, device), noise, tag="train",
                        unit=unit, epochs=tc.epochs, prepare=to_layout))
    for phase in phases:
        phase.compute = step_function(phase.module, tc)

    # Where to start: the beginning, or exactly where the checkpoint left off.
    pos = {"phase": 0, "epoch": 0, "step": 0}
    best_val, val, epoch_state = math.inf, {}, None
    if resume is not None:
        pos = {k: resume[k] for k in pos}
        best_val, val = resume["best_val"], resume["val"]
        phases[pos["phase"]].optimizer.load_state_dict(resume["optimizer"])
        precision.scaler.load_state_dict(resume["scaler"])
        if resume["epoch_state"] is not None:
            es = resume["epoch_state"]
            epoch_state = EpochState(es["perm"].to(device), es["batch"], es["seen"],
                                     {k: v.to(device) for k, v in es["sums"].items()}, es["skipped"])
        set_rng_state(resume["rng"])
        log.info("resuming from step %d (phase %d, epoch %d%s)", pos["step"], pos["phase"], pos["epoch"],
                 f", batch {epoch_state.batch}" if epoch_state else "")
    # purge_step: TensorBoard drops whatever an interrupted run logged after its checkpoint
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=pos["step"] + 1 if resume is not None else None)

    def checkpoint(phase_index: int, epochs_done: int, step: int, state: EpochState | None,
                   names: tuple[str, ...] = ("last.pt",)) -> None:
        if state is not None:
            state.check_finite()  # never replace a good checkpoint with a diverged model
        snapshot = {"model": model.state_dict(), "optimizer": phases[phase_index].optimizer.state_dict(),
                    "phase": phase_index, "epoch": epochs_done, "step": step,
                    "epoch_state": None if state is None else state.to_dict(),
                    "scaler": precision.scaler.state_dict(), "val": val, "best_val": best_val, "rng": rng_state(),
                    "input_shape": list(data.shape), "config": OmegaConf.to_container(cfg, resolve=True)}
        for name in names:
            try:
                save_checkpoint(snapshot, ckpt_dir / name)
            except (OSError, RuntimeError) as e:  # torch's zip writer reports a full disk as RuntimeError
                free_mb = shutil.disk_usage(ckpt_dir).free / 2**20
                raise ConfigError("hydra.run.dir", f"could not write {ckpt_dir / name} ({str(e)[:200]}; "
                                  f"{free_mb:.1f} MB free on that disk); the previous checkpoint there is intact",
                                  f"free disk space or fix the dir's permissions, then continue with "
                                  f"resume={run_dir}") from None
        writer.flush()

    ips = 0.0
    pause_step = faults.pause_step()
    with StopSignals() as signals:
        for i, phase in enumerate(phases):
            if i < pos["phase"]:
                continue
            first_epoch = pos["epoch"] + 1 if i == pos["phase"] else 1
            for epoch in range(first_epoch, phase.epochs + 1):

                def after_step(step: int, state: EpochState, i: int = i, epoch: int = epoch) -> bool:
                    if step == pause_step:
                        faults.pause(f"after step {step}", until=lambda: signals.requested is not None)
                    if signals.requested is not None:
                        return True
                    if tc.checkpoint_every_n_steps and step % tc.checkpoint_every_n_steps == 0:
                        checkpoint(i, epoch - 1, step, state)
                    return False

                t0 = time.perf_counter()
                desc = f"epoch {epoch}/{phase.epochs}" if phase.main else f"{phase.tag} epoch {epoch}"
                state = epoch_state or EpochState(perm=torch.randperm(len(data.train), device=device))
                try:
                    result = train_epoch(phase, data, recon, tc.batch_size, writer, pos["step"],
                                         tc.log_every_n_steps, progress, desc, state, after_step, tc.on_nan,
                                         precision)
                except NonFiniteLoss as e:
                    last = ckpt_dir / "last.pt"
                    good = f"the last good checkpoint is {last} (untouched)" if last.exists() else "no checkpoint yet"
                    raise ConfigError("trainer.on_nan", f"non-finite loss at step {e.step} ({desc}); {good}",
                                      "lower optim.lr, or trainer.on_nan=skip_batch to skip such batches"
                                      + (f"; continue with resume={run_dir}" if last.exists() else "")) from None
                pos["step"], epoch_state, ips = result.step, None, result.images_per_sec
                if result.stopped:
                    checkpoint(i, epoch - 1, result.step, state)
                    stop(signals.requested, result.step, run_dir, writer)
                if not phase.main:
                    writer.add_scalar(f"{phase.tag}/loss_{phase.unit}", result.means["loss"], result.step)
                    log.info("%s epoch %d/%d: loss_%s %.5g (%r), %s img/s", phase.tag, epoch, phase.epochs,
                             phase.unit, result.means["loss"], phase.noise, f"{ips:,.0f}")
                    checkpoint(i, epoch, result.step, None)
                    if signals.requested is not None:
                        stop(signals.requested, result.step, run_dir, writer)
                    continue
                val = evaluate(model, data, data.val, recon, tc.eval_batch_size)
                for k, v in result.means.items():
                    writer.add_scalar(f"train/{k}_{unit}", v, result.step)
                for k, v in val.items():
                    writer.add_scalar(f"val/{k}", v, result.step)
                writer.add_scalar("epoch", epoch, result.step)
                writer.add_scalar("perf/images_per_sec", ips, result.step)
                write_images(writer, model, recon, grid_clean, grid_noisy, noise, prior_z, result.step)
                improved = val[f"loss_{unit}"] < best_val
                best_val = min(best_val, val[f"loss_{unit}"])
                checkpoint(i, epoch, result.step, None, ("last.pt", "best.pt") if improved else ("last.pt",))
                log.info("epoch %d/%d step %d: train loss_%s %.5g | val loss_%s %.5g, psnr %.2f dB | %s img/s, %.1fs",
                         epoch, phase.epochs, result.step, unit, result.means["loss"], unit, val[f"loss_{unit}"],
                         val["psnr_db"], f"{ips:,.0f}", time.perf_counter() - t0)
                if signals.requested is not None:  # arrived during the epoch's last step
                    stop(signals.requested, result.step, run_dir, writer)

    train_final = evaluate(model, data, data.train, recon, tc.eval_batch_size)
    test = evaluate(model, data, data.test, recon, tc.eval_batch_size)
    metrics = {f"{split}/{k}": v for split, d in (("train", train_final), ("val", val), ("test", test))
               for k, v in d.items()}
    metrics.update({"epochs": tc.epochs, "steps": pos["step"], "images_per_sec": ips, "best_val_loss": best_val,
                    "torch_threads": torch.get_num_threads()})
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    writer.add_hparams(hparams_of(cfg, choices or {}),
                       {f"hparam/{k.replace('/', '_')}": v for k, v in metrics.items() if "/" in k},
                       run_name=".", global_step=pos["step"])
    writer.close()
    log.info("test: %s", ", ".join(f"{k} {v:.5g}" for k, v in test.items()))
    log.info("run dir: %s", run_dir)
    return val[f"loss_{unit}"]


def stop(signum: int, step: int, run_dir: Path, writer: SummaryWriter) -> None:
    """After a stop signal's checkpoint: say how to continue, exit with 128 + the signal number
    (143 for SIGTERM, 130 for SIGINT: what shells and requeue tooling read as 'terminated')."""
    writer.close()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file) if not str(o).startswith("resume=")] \
        if overrides_file.is_file() else []
    log.warning("%s: stopped after step %d; checkpoint written to %s. Continue with:\n  python -m aecli.train %s",
                signal.Signals(signum).name, step, run_dir / "checkpoints" / "last.pt",
                " ".join([*overrides, f"resume={run_dir}"]))
    raise SystemExit(128 + signum)


@torch.no_grad()
def write_images(writer: SummaryWriter, model: Autoencoder, recon: ReconstructionLoss, clean: Tensor,
                 noisy: Tensor, noise: Noise, prior_z: Tensor | None, step: int) -> None:
    """clean | corrupted (when there is noise) | reconstruction of what the model was fed;
    for a VAE also decoded samples from the prior (the same latent codes every epoch)."""
    model.eval()
    shown = noisy if not isinstance(noise, NoNoise) else clean
    rows = [clean] + ([noisy] if shown is noisy else []) + [recon.output(model.decode(model.encode(shown)))]
    writer.add_image("reconstruction/" + ("clean_corrupted_reconstructed" if shown is noisy
                                          else "clean_reconstructed"), image_grid(rows), step)
    if prior_z is not None:
        samples = recon.output(model.decode(prior_z))
        writer.add_image("samples/prior", image_grid([samples[:8], samples[8:]]), step)
    model.train()
