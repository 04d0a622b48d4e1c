"""Everything a run builds from its config before it trains, shared by ``aecli.training.run.run`` and
``aecli.training.bench``: the device and threads, the seed, the data, the model, loss and noise, the
precision, the phases with their optimizers, and each phase's training step."""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from omegaconf import DictConfig
from torch import Tensor

from aecli.components import build, load_data
from aecli.config import value
from aecli.data import ImageData
from aecli.device import resolve_device
from aecli.errors import ConfigError
from aecli.losses import ReconstructionLoss
from aecli.models import Autoencoder, PretrainsInStages
from aecli.threads import choose_threads, cores_available, wait_policy_in_effect
from aecli.training.distributed import World
from aecli.training.graph_step import GraphStep
from aecli.training.placement import JobSlot, gpu_for_job, threads_per_job
from aecli.training.state import Phase, TrainState, seed_everything
from aecli.training.step import Precision, Step, optimizer_for

log = logging.getLogger(__name__)


def place_job(cfg: DictConfig, slot: JobSlot, world: World = World()) -> tuple[torch.device, str]:
    """Thread count and device for this job of a sweep (``aecli.training.placement``), and a line that
    says so (logged once the run is built; ``{threads}`` is filled in by ``build_parts``, which times
    ``trainer.num_threads=auto`` on the CPU once the model exists)."""
    cores = cores_available()
    threads = threads_per_job(cfg.trainer.get("num_threads"), cores, slot.jobs_at_once)
    if threads is not None:
        torch.set_num_threads(threads)
    wait = wait_policy_in_effect().replace("{", "{{").replace("}", "}}")  # the line is formatted again below
    line = (f"torch threads: {{threads}} (trainer.num_threads={cfg.trainer.get('num_threads')}; "
            f"{cores} cores, {slot.jobs_at_once} job(s) at once, {slot.launcher} launcher; wait policy {wait})")
    name = value(cfg.device.name)
    gpus = torch.cuda.device_count() if name in ("auto", "cuda") else 0
    index = gpu_for_job(cfg.device.get("index"), slot.num, gpus)
    if world.distributed and gpus and index is None:
        index = world.local_rank % gpus  # one GPU per local rank (shared when there are fewer)
    device = resolve_device(name, index)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL and CUDA graphs use the current device
    return device, line


@dataclass
class Parts:
    """What a run trains and how: built once from the config."""

    device: torch.device
    data: ImageData
    model: Autoencoder
    recon: ReconstructionLoss
    noise: Any
    precision: Precision
    to_layout: Callable[[Tensor], Tensor] | None  # clean batch -> the model's memory layout
    placement: str = ""  # threads and device, in words


def build_parts(cfg: DictConfig, slot: JobSlot = JobSlot(), data: ImageData | None = None,
                world: World = World(), fitted: dict[str, Any] | None = None, pick_threads: bool = True) -> Parts:
    """Device, seed, data (on the device), loss, model, noise and precision, as ``cfg`` says
    (``data``: these images instead of ``cfg.dataset``'s; ``fitted``: a resumed run's stored
    scaler or vocabulary, ``aecli.components.load_data``); a config that does not fit is a
    ``ConfigError`` (nothing is written here). DDP: every rank builds the same model (the run's
    seed), then draws its own random numbers (noise) from seed + rank. ``pick_threads``: False
    keeps the thread count already chosen (a packed sweep's members after the first)."""
    if world.distributed and slot.num is None:
        slot = JobSlot(jobs_at_once=world.local_size, launcher="torchrun")
    device, placement = place_job(cfg, slot, world)
    seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg, fitted)
    recon: ReconstructionLoss = build(cfg, "loss")
    top = float(data.train.max()) / data.max_value if isinstance(data.train, Tensor) else 1.0  # files: uint8/255
    if recon.needs_unit_range and top > 1.0:
        fix = {"text": "use dataset.representation=binary, or loss=multinomial for word counts",
               "table": "use loss=mse, or dataset.scale=minmax (the train split's range; other splits may "
                        "still leave it)"}.get(data.kind, "use loss=mse, or a dataset whose pixels lie in [0, 1]")
        raise ConfigError("loss", f"loss={recon.name} needs data in [0, 1], but this dataset reaches {top:.3g}", fix)
    data = data.to(device)
    model: Autoencoder = build(cfg, "model", input_shape=data.shape).to(device)
    noise = build(cfg, "noise")
    precision = Precision.from_config(cfg.trainer.precision, device)
    if pick_threads and device.type == "cpu" and cfg.trainer.get("num_threads") == "auto":
        most = threads_per_job("auto", cores_available(), slot.jobs_at_once) or cores_available()
        placement += "; " + time_threads(model, data.shape, recon, precision, cfg, most)[1]
    placement = placement.format(threads=torch.get_num_threads())
    if world.distributed:
        seed_everything(cfg.seed + world.rank)
        placement += f"; rank {world.rank} of {world.size} ({world.backend()})"
    return Parts(device, data, model, recon, noise, precision, set_memory_layout(model, cfg.trainer, device),
                 placement)


def time_threads(model: Autoencoder, shape: tuple[int, ...], recon: ReconstructionLoss, precision: Precision,
                 cfg: DictConfig, most: int) -> tuple[int, str]:
    """``trainer.num_threads=auto`` on the CPU: ``aecli.threads.choose_threads`` times training steps
    (this model, batch size, loss, precision and optimizer) at 1 .. ``most`` threads and keeps the
    fastest. The steps train a throwaway copy on random pixels (the same work as real images) and
    the random number streams are restored: the run itself is the same whatever count wins."""
    probe = copy.deepcopy(model).train()
    opt = optimizer_for(probe.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.fused, torch.device("cpu"))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = probe.loss(x, x, recon)["loss"]
        loss.backward()
        opt.step()

    with torch.random.fork_rng(devices=[]):
        x = torch.rand(cfg.trainer.batch_size, *shape)
        return choose_threads(step, most)


def set_memory_layout(model: torch.nn.Module, trainer_cfg: DictConfig,
                      device: torch.device) -> Callable[[Tensor], Tensor] | None:
    """The CUDA layout knobs: ``trainer.cudnn_benchmark`` (cuDNN picks the fastest conv
    algorithms for these fixed shapes) and ``trainer.channels_last`` (auto: models that prefer
    it, on CUDA, whose tensor cores want NHWC). Converts ``model`` in place; returns what turns a
    batch into that layout (None: leave batches as they are)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = trainer_cfg.cudnn_benchmark in (True, "auto")
    prefers = getattr(model, "prefers_channels_last", False)
    channels_last = trainer_cfg.channels_last is True or (
        trainer_cfg.channels_last == "auto" and device.type == "cuda" and prefers)
    if not channels_last:
        return None
    model.to(memory_format=torch.channels_last)
    return lambda x: x.contiguous(memory_format=torch.channels_last)


def new_state(parts: Parts, cfg: DictConfig, world: World = World()) -> TrainState:
    """The phases (the model's pre-training stages, then end-to-end training), each with its
    own Adam, and a fresh training state at step 0."""
    def adam(params: Any) -> torch.optim.Optimizer:
        return optimizer_for(params, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.fused, parts.device,
                             capturable=uses_cuda_graph(cfg, parts.device, world))

    stages = parts.model.pretraining_stages(parts.noise) if isinstance(parts.model, PretrainsInStages) else []
    phases = [replace(s, optimizer=adam(s.module.parameters())) for s in stages]
    phases.append(Phase("train", parts.model, parts.noise, cfg.trainer.epochs, parts.model.loss_unit,
                        parts.to_layout, main=True, optimizer=adam(parts.model.parameters())))
    return TrainState(parts.model, phases, parts.precision.scaler())


def uses_cuda_graph(cfg: DictConfig, device: torch.device, world: World = World()) -> bool:
    """``trainer.cuda_graph``: true, false, or auto (CUDA, and a step that can be captured:
    no per-step host check for ``on_nan=skip_batch``, no ``torch.compile``, no DDP all-reduce)."""
    setting = cfg.trainer.cuda_graph
    if setting is False or device.type != "cuda":
        return False
    capturable = value(cfg.trainer.on_nan) != "skip_batch" and not cfg.trainer.compile and not world.distributed
    if setting is True and not capturable:
        raise ConfigError("trainer.cuda_graph", "a CUDA graph cannot hold the per-step host check of "
                          "trainer.on_nan=skip_batch, a torch.compile'd step, nor a DDP run's gradient all-reduce",
                          "use trainer.cuda_graph=auto, or trainer.on_nan=stop and trainer.compile=false")
    return capturable


def make_step(phase: Phase, parts: Parts, state: TrainState, cfg: DictConfig, world: World = World()) -> Step:
    """The training step for ``phase``: replayed as a CUDA graph (``aecli.training.graph_step``) when
    ``uses_cuda_graph``, else eager, its loss ``torch.compile``'d when ``trainer.compile``."""
    args = (phase, parts.recon, parts.precision, state.scaler, parts.data.as_float)
    if uses_cuda_graph(cfg, parts.device, world):

        return GraphStep(*args)
    # Phase.module is an nn.Module, whose attribute type (Tensor | Module) hides that it has ``loss``
    loss = cast(Callable[..., dict[str, Tensor]], phase.module.loss)
    compute = torch.compile(loss, mode=cfg.trainer.compile_mode) if cfg.trainer.compile else None
    return Step(*args, compute=compute, skip_nan=value(cfg.trainer.on_nan) == "skip_batch", world=world)
