"""``python -m aecli.bench``: aecli's training path against the classic PyTorch loop.

In one process, on the same images, from the same initial weights, for each case:

- **baseline**: the loop of pytorch/examples (vae/main.py) as people write it: a Dataset that
  makes a PIL image per item and ``transforms.ToTensor()`` it, ``DataLoader(shuffle=True)``,
  ``loss.item()`` every step, ``torch.optim.Adam`` with its defaults;
- **aecli**: ``aecli.training.loop.train_epoch`` with the model, optimizer, step and data built by the
  same code as ``python -m aecli.train`` (``aecli.training.build``: one uint8 tensor on the device, sliced
  per batch; on CUDA the whole step replayed as one CUDA graph).

Each path trains one warm-up epoch, then ``--epochs`` timed epochs, alternating between the
two paths so both see the same machine load. Printed per path: images/s (median of the timed
epochs), the test loss after the same number of epochs, the speed ratio, and the fraction of
the fp32 roofline: FLOPs of a training step (counted by ``torch.utils.flop_counter``) per image
x images/s / fp32 matmul GFLOP/s measured here. Then the time from starting
``python -m aecli.train trainer.max_steps=1`` to the end of its first training step (the
run's own ``first_step_seconds`` in ``metrics.json``).

``--hog N`` runs the comparison a second time with N busy-loop processes beside it (a laptop
with other work on its cores) and prints both tables. The baseline runs at torch's default
thread count, as people run it; aecli at the count its ``trainer.num_threads`` gives (auto:
timed at startup, under the load of that table).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aecli.data import ImageData, load_digits, load_torchvision
from aecli.device import resolve_device
from aecli.errors import ConfigError
from aecli.losses import ReconstructionLoss
from aecli.metrics import reconstruction
from aecli.models import Autoencoder
from aecli.noise import NoNoise
from aecli.training.build import build_parts, make_step, new_state
from aecli.training.hooks import Hook, Hooks, Run
from aecli.training.loop import train_epoch
from aecli.training.state import EpochState

# name -> (overrides composed into aecli's config, batch size, the classic counterpart: "vae" is
# pytorch/examples' own VAE network, "any" the same aecli model trained by the classic loop)
CASES = {
    "mlp-vae-128": (["experiment=mnist_vae"], 128, "vae"),
    "mlp-vae-512": (["experiment=mnist_vae", "trainer.batch_size=512"], 512, "vae"),
    "conv-ae-128": (["model=conv", "loss=mse", "noise=none"], 128, "any"),
}


# --- the baseline, as pytorch/examples writes it --------------------------------------------

class ClassicImages(torch.utils.data.Dataset):
    """What ``torchvision.datasets.MNIST`` does per item: uint8 array -> PIL image -> transform."""

    def __init__(self, raw: Tensor) -> None:
        from torchvision import transforms

        self.raw = raw.cpu()
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.raw[i, 0].numpy(), mode="L")
        return self.transform(img), 0


class ClassicVAE(nn.Module):
    """pytorch/examples' MNIST VAE, generalised only in its input size."""

    def __init__(self, n_in: int = 784, hidden: int = 400, latent: int = 20) -> None:
        super().__init__()
        self.n_in = n_in
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, n_in)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z: Tensor) -> Tensor:
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x.view(-1, self.n_in))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar

    def loss(self, x: Tensor) -> Tensor:
        """The example's ``loss_function``: BCE summed over pixels and batch + KL."""
        recon_x, mu, logvar = self(x)
        bce = F.binary_cross_entropy(recon_x, x.view(-1, self.n_in), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld

    # the example's layer -> the state-dict key of the same layer in aecli's VAE(hidden_dims=[h]);
    # fc21 and fc22 (mean, log-variance) are the two halves of aecli's to_stats
    AECLI_NAMES = {"fc1": "encoder.0", "fc3": "decoder.0", "fc4": "decoder.2"}
    PARAMS = ("weight", "bias")

    @classmethod
    def from_aecli(cls, vae: Autoencoder) -> ClassicVAE:
        """The same network with the same weights as an aecli ``VAE(hidden_dims=[h])``, copied
        by parameter name (a VAE of another shape is refused, not half copied; its buffers, such as
        a KL schedule's step count, have no counterpart in the example)."""
        state = {k: v.detach() for k, v in vae.named_parameters()}
        expected = {f"{name}.{p}" for name in (*cls.AECLI_NAMES.values(), "to_stats") for p in cls.PARAMS}
        if set(state) != expected:
            raise ValueError(f"the classic VAE has one hidden layer: expected the parameters {sorted(expected)}"
                             f" of VAE(hidden_dims=[h]), got {sorted(state)}")
        n_hidden, n_in = state["encoder.0.weight"].shape
        out = cls(n_in, n_hidden, vae.latent_dim)
        ours = {f"{mine}.{p}": state[f"{theirs}.{p}"] for mine, theirs in cls.AECLI_NAMES.items() for p in cls.PARAMS}
        for p in cls.PARAMS:
            ours[f"fc21.{p}"], ours[f"fc22.{p}"] = state[f"to_stats.{p}"].chunk(2)
        out.load_state_dict(ours)  # strict: every key, every shape
        return out.to(state["to_stats.weight"].device)

    def to_aecli(self, vae: Autoencoder) -> Autoencoder:
        """Copy these weights back into aecli's ``vae`` by state-dict key (to evaluate both the
        same way); returns ``vae``."""
        mine = self.state_dict()
        state = {f"{theirs}.{p}": mine[f"{ours}.{p}"] for ours, theirs in self.AECLI_NAMES.items() for p in self.PARAMS}
        state.update({f"to_stats.{p}": torch.cat([mine[f"fc21.{p}"], mine[f"fc22.{p}"]]) for p in self.PARAMS})
        state.update(dict(vae.named_buffers()))  # the VAE's own buffers stay as they are
        vae.load_state_dict(state)  # strict: every key, every shape
        return vae


class ClassicAE(nn.Module):
    """Any aecli model trained the classic way: ``F.mse_loss(model(x), x)``."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def loss(self, x: Tensor) -> Tensor:
        return F.mse_loss(self.model(x), x)

    def to_aecli(self, template: Autoencoder) -> Autoencoder:
        """The trained network as aecli measures it: it already is aecli's model (``template`` unused)."""
        return self.model


def classic_loader(raw: Tensor, batch_size: int, device: torch.device,
                   sampler: Iterable[int] | None = None) -> torch.utils.data.DataLoader:
    """The example's loader: ``shuffle=True``; ``num_workers=1, pin_memory=True`` on CUDA.
    ``sampler`` (tests only) fixes the order to compare with aecli's path step by step."""
    cuda: dict[str, Any] = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    if sampler is not None:
        return torch.utils.data.DataLoader(ClassicImages(raw), batch_size=batch_size, sampler=sampler,
                                           generator=torch.Generator(), **cuda)
    return torch.utils.data.DataLoader(ClassicImages(raw), batch_size=batch_size, shuffle=True, **cuda)


def classic_epoch(model: ClassicVAE | ClassicAE, optimizer: torch.optim.Optimizer, loader: torch.utils.data.DataLoader,
                  device: torch.device, on_step: Callable[[float], None] | None = None) -> float:
    """The example's ``train(epoch)``; returns the mean loss per image (the example's unit)."""
    model.train()
    train_loss = 0.0
    for data, _ in loader:
        data = data.to(device)
        optimizer.zero_grad()
        loss = model.loss(data)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if on_step is not None:
            on_step(loss.item())
    return train_loss / len(cast(Sized, loader.dataset))  # torch's Dataset declares no __len__; ClassicImages has


# --- measurements -----------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` fp32 GFLOP/s of an n x n matrix product: the roofline."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up (threads, kernels)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def step_flops_per_image(module: Autoencoder, x: Tensor, recon: ReconstructionLoss) -> float:
    """FLOPs (matmuls and convolutions, forward + backward) of one training step, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(module)  # the backward pass must not leave gradients on the real one
    with FlopCounterMode(display=False) as counter:
        model.loss(x, x, recon)["loss"].backward()
    return counter.get_total_flops() / x.shape[0]


@dataclass
class PathResult:
    images_per_sec: float
    test_loss: float
    threads: int


def aecli_epoch(cfg: Any, data: ImageData, device: torch.device, hooks: Sequence[Hook] = ()
                ) -> tuple[Autoencoder, ReconstructionLoss, Callable[..., None]]:
    """aecli's side, built by ``aecli.training.build`` exactly as a run builds it (noise off, as in the
    baseline): the model, its loss, and a function that trains one epoch (in the order ``perm``,
    else a fresh random one). ``hooks``: see every step (tests)."""
    parts = build_parts(cfg, data=data)
    parts.noise = NoNoise()
    state = new_state(parts, cfg)
    phase = state.phases[-1]
    step = make_step(phase, parts, state, cfg)
    run = Run(cfg=cfg, run_dir=Path("."), state=state, data=parts.data, recon=parts.recon, noise=parts.noise,
              hooks=Hooks(list(hooks)), step=step)

    def one_epoch(perm: torch.Tensor | None = None) -> None:
        perm = torch.randperm(len(parts.data.train), device=device) if perm is None else perm.to(device)
        state.epoch_state = EpochState(perm=perm)
        train_epoch(run, run.hooks, sync_every=10**9)

    return parts.model, parts.recon, one_epoch


def compose_case(name: str, device: str, extra: Sequence[str] = ()) -> Any:
    """Case ``name``'s aecli config with ``extra`` overrides; a bad override is one ``--aecli`` message."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides, batch_size, _ = CASES[name]
    try:
        with initialize_config_module(config_module="aecli.conf", version_base="1.3"):
            return compose(config_name="train", overrides=[*overrides, f"device={device}",
                                                           f"trainer.batch_size={batch_size}", *extra])
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError("--aecli", f"{' '.join(extra)}: {str(e).splitlines()[0]}",
                          "check each KEY=VALUE's spelling (aecli train --help lists the keys)") from None


def bench_case(name: str, data: ImageData, device: torch.device, epochs: int,
               extra: Sequence[str] = ()) -> tuple[PathResult, PathResult, float, str]:
    """Baseline and aecli for one case: their results, FLOPs per image, the test loss's unit.
    ``extra``: more overrides for aecli's side (a speed knob to measure, e.g. trainer.compile=true)."""
    _, batch_size, counterpart = CASES[name]
    train, test = data.train, data.test
    assert isinstance(train, Tensor) and isinstance(test, Tensor), "load_data's splits are in memory"
    cfg = compose_case(name, device.type, extra)
    default_threads = torch.get_num_threads()
    model, recon, aecli_epoch_at_its_threads = aecli_epoch(cfg, data, device)
    aecli_threads = torch.get_num_threads()
    torch.set_num_threads(default_threads)

    def aecli_one_epoch() -> None:
        torch.set_num_threads(aecli_threads)
        try:
            aecli_epoch_at_its_threads()
        finally:
            torch.set_num_threads(default_threads)
    classic: ClassicVAE | ClassicAE = (ClassicVAE.from_aecli(model) if counterpart == "vae"
                                       else ClassicAE(copy.deepcopy(model)))
    classic_opt = torch.optim.Adam(classic.parameters(), lr=cfg.optim.lr)  # the example's optimizer
    loader = classic_loader(train, batch_size, device)
    flops = step_flops_per_image(model, data.as_float(train[:batch_size]), recon)

    paths = {"baseline": lambda: classic_epoch(classic, classic_opt, loader, device), "aecli": aecli_one_epoch}
    speeds: dict[str, list[float]] = {path: [] for path in paths}
    for epoch in range(epochs + 1):  # epoch 0 warms up (and captures the CUDA graph); alternate paths
        for path, train_one_epoch in paths.items():
            sync(device)
            t0 = time.perf_counter()
            train_one_epoch()
            sync(device)
            if epoch > 0:
                speeds[path].append(len(data.train) / (time.perf_counter() - t0))

    # Both evaluated by the same code on the same images (the VAE's loss samples: same seed).
    def test_loss(m: Autoencoder) -> float:
        torch.manual_seed(0)
        return reconstruction(m, data, test, recon, 1024)[f"loss_{m.loss_unit}"]

    baseline_model = classic.to_aecli(copy.deepcopy(model))
    unit = "nats/image" if model.loss_unit == "per_image" else "MSE/pixel"
    return (PathResult(statistics.median(speeds["baseline"]), test_loss(baseline_model), default_threads),
            PathResult(statistics.median(speeds["aecli"]), test_loss(model), aecli_threads), flops, unit)


def startup_seconds(repeats: int = 3, device: str = "cpu") -> list[float]:
    """``first_step_seconds`` of ``python -m aecli.train trainer.max_steps=1`` (default dataset
    and model): from the process's start to the end of its first training step."""
    import json

    times = []
    with tempfile.TemporaryDirectory() as cwd:
        for i in range(repeats):
            run_dir = Path(cwd) / f"run{i}"
            proc = subprocess.run([sys.executable, "-m", "aecli.train", "trainer.max_steps=1", "trainer.progress=log",
                                   f"device={device}", f"hydra.run.dir={run_dir}"], cwd=cwd,
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"the startup run failed:\n{proc.stderr[-2000:]}")
            times.append(json.loads((run_dir / "metrics.json").read_text())["first_step_seconds"])
    return times


@contextlib.contextmanager
def cpu_hog(processes: int) -> Iterator[None]:
    """``processes`` busy loops (other work on the same cores) while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


# --- the command ----------------------------------------------------------------------------

def load_data(name: str, root: str, repeat: int) -> tuple[ImageData, str]:
    """MNIST (official train / test splits) or the bundled digits upsampled to MNIST's 28 x 28,
    the training split tiled ``repeat`` times so an epoch is long enough to time."""
    if name == "mnist":
        d = load_torchvision("mnist", root, download=False)
        assert isinstance(d.train, Tensor) and isinstance(d.val, Tensor), "torchvision's sets load into memory"
        train = torch.cat([d.train, d.val])
        return ImageData(train, d.test, d.test), f"MNIST ({len(train):,} train / {len(d.test):,} test, 28x28)"
    d = load_digits()
    up = lambda t: (F.interpolate(t.float(), size=(28, 28), mode="bilinear", align_corners=False)  # noqa: E731
                    * (255.0 / d.max_value)).round().clamp(0, 255).to(torch.uint8)
    train = up(d.train).repeat(repeat, 1, 1, 1)
    return (ImageData(train, up(d.val), up(d.test)),
            f"scikit-learn digits upsampled to 28x28 ({len(d.train):,} train x{repeat} per epoch / "
            f"{len(d.test):,} test)")


def compare(args: argparse.Namespace, data: ImageData, device: torch.device, gflops: float, title: str) -> None:
    """One table: each case's baseline and aecli paths (``title``: the machine's load, when it varies)."""
    if title:
        print(f"\n{title}")
    print(f"| case | path | threads | images/s | test loss after {args.epochs + 1} epochs | speed-up | roofline |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.cases:
        base, fast, flops, unit = bench_case(name, data, device, args.epochs, args.aecli)
        for path, r in (("baseline", base), ("aecli", fast)):
            print(f"| {name} | {path} | {r.threads} | {r.images_per_sec:,.0f} | {r.test_loss:.4g} {unit} | "
                  f"{r.images_per_sec / base.images_per_sec:.2f}x | "
                  f"{flops * r.images_per_sec / (gflops * 1e9):.0%} |", flush=True)
        gap = fast.test_loss / base.test_loss - 1
        print(f"  {name}: {flops / 1e6:.2f} MFLOP per image per step; aecli's test loss {gap:+.2%} vs baseline")


def recipe(args: argparse.Namespace) -> None:
    """``aecli bench`` (its options parsed by ``aecli.cli``): the table, then the startup time."""
    cases = args.cases = args.cases or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ConfigError("--cases", f"{', '.join(unknown)}: no such case", f"pick from {', '.join(CASES)}")
    device = resolve_device(args.device, flag="--device")
    for name in cases:  # every --aecli override checked before any work
        compose_case(name, device.type, args.aecli)
    try:
        data, described = load_data(args.dataset, args.data_root, args.repeat)
    except ConfigError as e:
        if not e.key.startswith("dataset"):
            raise
        raise ConfigError("--data-root", e.problem, "download MNIST once (aecli train dataset=mnist "
                          "dataset.download=true), then pass --data-root DIR where it lies") from None
    data = data.to(device)
    gflops = matmul_gflops(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"aecli bench: {described}; {device} ({where}); torch {torch.__version__}; "
          f"fp32 matmul {gflops:.1f} GFLOP/s; {args.epochs} timed epochs after 1 warm-up, median"
          + (f"; aecli with {' '.join(args.aecli)}" if args.aecli else ""))
    compare(args, data, device, gflops, "quiet" if args.hog else "")
    if args.hog:
        with cpu_hog(args.hog):
            compare(args, data, device, gflops, f"loaded: {args.hog} busy-loop process(es) beside it")
    if args.startup_runs:
        times = startup_seconds(args.startup_runs, device.type)
        print(f"startup: `python -m aecli.train trainer.max_steps=1` to the end of its first step: "
              f"{statistics.median(times):.2f} s (median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)})")
