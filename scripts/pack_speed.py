"""Training images/s summed over N members: one packed step (aecli.training.packed.PackedStep, all
members at once under torch.func.vmap) against the N members' own eager steps one after another,
in the same process, alternating. Usage: python scripts/pack_speed.py [--model vae] [--sizes 1 4 16 64]
[--device cpu|cuda] [--seconds 2] [overrides ...] (e.g. dataset=mnist dataset.root=data)."""
from __future__ import annotations

import argparse
import functools
import time
from contextlib import nullcontext

import torch
from hydra import compose, initialize_config_module

from aecli.training.build import build_parts, new_state
from aecli.training.packed import PackedStep
from aecli.training.state import EpochState
from aecli.training.step import Step


def members(n: int, model: str, device: str, overrides: list[str]):
    with initialize_config_module(config_module="aecli.conf", version_base="1.3"):
        cfgs = [compose(config_name="train", overrides=[f"model={model}", f"device={device}", f"seed={i}",
                                                         "trainer.num_threads=null", *overrides]) for i in range(n)]
    out, data = [], None
    for cfg in cfgs:
        parts = build_parts(cfg, data=data, pick_threads=False)
        data = parts.data
        state = new_state(parts, cfg)
        phase = state.phases[-1]
        step = Step(phase, parts.recon, parts.precision, state.scaler, parts.data.as_float)
        step.begin_epoch(EpochState(perm=torch.arange(len(data.train), device=parts.device)), 0)
        out.append((parts, step))
    return out


def one_by_one(steps: list[Step], batch: torch.Tensor) -> None:
    for s in steps:
        s(batch, 1)


def timed(fn, seconds: float, sync) -> float:
    fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ae")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    print(f"| members | packed img/s (sum) | one by one img/s (sum) | packed / one by one |  ({args.model}, "
          f"{args.device}, {torch.get_num_threads()} threads)")
    print("|---:|---:|---:|---:|")
    for n in args.sizes:
        ms = members(n, args.model, args.device, args.overrides)
        parts = ms[0][0]
        batch = parts.data.train[:128]
        steps = [s for _, s in ms]
        pack = PackedStep(steps[0].phase.module, parts.recon, parts.precision)
        models = [s.phase.module for s in steps]
        packed = functools.partial(pack, models, [True] * n, [batch] * n, steps, [nullcontext] * n)
        separate = functools.partial(one_by_one, steps, batch)
        rates = [timed(packed, args.seconds, sync), timed(separate, args.seconds, sync)]
        images = n * batch.shape[0]
        print(f"| {n} | {rates[0] * images:,.0f} | {rates[1] * images:,.0f} | {rates[0] / rates[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
