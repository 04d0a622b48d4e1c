"""``aecli sample RUN``: new images from a trained model.

- ``--n 64``: codes drawn from a VAE's prior N(0, I), decoded (a plain autoencoder has no prior:
  its codes follow no known distribution, so it is told what to use instead);
- ``--interpolate A B --steps 10``: the straight line between the codes of test images A and B,
  decoded (any model), between the two images themselves;
- ``--manifold``: a ``latent_dim=2`` VAE's decoder over the plane, as in Kingma & Welling (2014),
  Fig. 4: a grid of equally likely codes, the inverse normal CDF of evenly spaced quantiles.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor

from aecli.errors import ConfigError
from aecli.figures import Axes, as_rows, grid_figure, save_figure
from aecli.models import HasPrior
from aecli.use import commandline as commands
from aecli.use import inference
from aecli.use.trained import TrainedRun


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    who = commands.run_title(run)
    if args.interpolate is not None:
        data = run.data(args.data_root)
        a, b = (commands.test_index(i, len(data.test), "--interpolate") for i in args.interpolate)
        ends = data.as_float(inference.pick(data.test, [a, b], run.device))
        images = torch.cat([ends[:1], walk(run, ends[0], ends[1], args.steps), ends[1:]])
        t = torch.linspace(0.0, 1.0, args.steps).tolist()
        captions = [f"test {a}\n(input)"] + [f"t={x:.2f}" for x in t] + [f"test {b}\n(input)"]
        fig = grid_figure([images], f"{who}: the straight line from test image {a}'s code to {b}'s, decoded in "
                          f"{args.steps} steps (t=0, t=1: the two reconstructions); the framed ends are the real "
                          "images", captions=[captions], marked=[(0, 0), (0, len(images) - 1)])
        name = f"interpolate_{a}_{b}_steps{args.steps}"
    elif args.manifold:
        rows, values = manifold(run, args.side)
        fig = grid_figure(rows, f"{who}: the decoder over the 2-D prior, {args.side} x {args.side} codes at "
                          "evenly spaced quantiles (5% to 95%) of N(0, 1)",
                          axes=Axes("code number 1", values, "code number 2", values[::-1]))
        name = f"manifold_side{args.side}"
    else:
        images = prior_samples(run, args.n, args.seed)
        fig = grid_figure(as_rows(images), f"{who}: {args.n} images decoded from codes drawn from the prior "
                          f"N(0, I) (seed {args.seed})")
        name = f"prior_n{args.n}_seed{args.seed}"
    path = commands.out_dir(args, run) / f"sample_{name}.png"
    save_figure(fig, path)
    commands.wrote(path)


@torch.no_grad()
def prior_samples(run: TrainedRun, n: int, seed: int) -> Tensor:
    """``n`` images decoded from codes drawn from the model's prior (``model.sample_latents``)."""
    if not isinstance(run.model, HasPrior):
        why = getattr(run.model, "why_no_prior", "its codes follow no known distribution")  # a custom nn.Module
        raise ConfigError("--n", f"{type(run.model).__name__} has no prior to draw codes from ({why})",
                          "use --interpolate A B (decodes the line between "
                          "two test images' codes; any model), or train a VAE (model=vae) to sample")
    z = run.model.sample_latents(n, torch.Generator().manual_seed(seed))
    return run.recon.output(run.model.decode(z.to(run.device)))


@torch.no_grad()
def walk(run: TrainedRun, a: Tensor, b: Tensor, steps: int) -> Tensor:
    """``steps`` images decoded along the straight line from image ``a``'s code to ``b``'s; the
    ends are the model's reconstructions of ``a`` and ``b``."""
    za, zb = run.model.encode(torch.stack([a, b]))
    t = torch.linspace(0.0, 1.0, steps, device=za.device)[:, None]
    return run.recon.output(run.model.decode((1 - t) * za + t * zb))


@torch.no_grad()
def manifold(run: TrainedRun, side: int) -> tuple[list[Tensor], list[float]]:
    """The decoder over a ``side`` x ``side`` grid of a 2-D prior's quantiles (5% to 95%),
    first code number left to right, second bottom to top; one row per tensor; and the code
    values of the columns (left to right)."""
    model = run.model
    if not isinstance(model, HasPrior) or model.latent_dim != 2:
        raise ConfigError("--manifold", f"the manifold needs a VAE with latent_dim=2 (this run: "
                          f"{type(model).__name__}, latent_dim={model.latent_dim})",
                          "train model=vae model.latent_dim=2; for a 2-D autoencoder, aecli map RUN "
                          "--method code plots its codes")
    grid = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side)).to(run.device)
    rows = []
    for y in grid.flip(0):  # top row: the largest second code number
        z = torch.stack([grid, y.expand(side)], dim=1)
        rows.append(run.recon.output(model.decode(z)))
    return rows, grid.cpu().tolist()
