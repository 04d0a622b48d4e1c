"""``aecli finetune RUN --labels-per-class N``: does pre-training pay when labels are few?

The model's encoder (``model.encode``) gets a linear classification head and is trained on N
labelled train images per class; its test accuracy is compared with the same network from
random initialisation, with the same budget (steps, batch, Adam learning rate), the same
labelled images and the same head initialisation per seed. Two references, read out by the
linear probe of ``aecli.use.probes`` (the one ``aecli.use.evaluate`` reports; a fit that stops at
its iteration cap before converging is named): the frozen pre-trained codes (what the codes
hold without fine-tuning) and the raw pixels.
Greedy layer-wise pre-training (stacked denoising autoencoders, Vincent et al. 2010) was
proposed for exactly this: unlabelled images shape the encoder, few labels finish it.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aecli.data import ImageData, n_classes
from aecli.errors import ConfigError
from aecli.store import rundir
from aecli.use import commandline as commands
from aecli.use import inference, probes
from aecli.use.trained import TrainedRun

TRAINED = {"pre-trained encoder, fine-tuned": "pre-trained", "random init, same network, trained": "random"}
PROBES = ("pre-trained codes, logistic regression (encoder frozen)", "pixels, logistic regression")


class Classifier(nn.Module):
    """A linear head on an encoder's codes (``encoder.encode``)."""

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.latent_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder.encode(x))


def recipe(args: argparse.Namespace) -> None:
    run = commands.open_run(args)
    data = run.data(args.data_root)
    if data.labels is None:
        raise ConfigError("RUN", "this run's dataset has no labels to fine-tune on",
                          "train on a labelled dataset (digits, mnist, ..., a folder with one sub-folder per class)")
    keep = scored_test_images(data)
    test_labels = data.labels["test"][keep]
    test_pixels = data.as_float(data.test[:]).flatten(1).cpu()[keep]
    test_codes = inference.codes(run, data.test, data.max_value).cpu()[keep]
    accuracy: dict[str, list[float]] = {name: [] for name in (*TRAINED, *PROBES)}
    unconverged: set[str] = set()
    for seed in commands.progress(range(args.seed, args.seed + args.seeds), args.seeds, "seeds"):
        x, y = labelled_subset(data, args.labels_per_class, seed, run.device)
        for name, weights in TRAINED.items():
            model = classifier(run, weights, n_classes(data), seed)
            fit(model, x, y, args.steps, args.lr, seed)
            accuracy[name].append(test_accuracy(run, model, data, keep))
        with torch.no_grad():
            codes = run.model.encode(x).cpu()
        for name, train, test in ((PROBES[0], codes, test_codes), (PROBES[1], x.flatten(1).cpu(), test_pixels)):
            features = probes.Features(train.numpy(), test.numpy())
            score, converged = probes.linear_probe(features, y.cpu().numpy(), test_labels.numpy(), seed)
            accuracy[name].append(score)
            if not converged:
                unconverged.add(name)
    report(run, args, accuracy, len(x), sorted(unconverged), int(keep.sum()))


def scored_test_images(data: ImageData) -> Tensor:
    """Which test images are scored: those of the classes that have labelled train images. A run
    trained with ``dataset.classes`` has test images of the held-out classes too, which no
    classifier trained here can get right; they are left out, and the user told so."""
    trained = data.labels["train"].unique()
    keep = torch.isin(data.labels["test"], trained)
    if not keep.all():
        missing = sorted({commands.class_name(data.classes, int(k)) for k in data.labels["test"][~keep]})
        print(f"note: class(es) {', '.join(missing)} have no train images in this run (dataset.classes): their "
              f"{int((~keep).sum())} test images are left out; accuracy is over the other {int(keep.sum())}")
    return keep


def labelled_subset(data: ImageData, per_class: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``per_class`` train images of each class (fewer if a class has fewer), drawn by ``seed``."""
    labels, gen = data.labels["train"], torch.Generator().manual_seed(seed)
    picked = [idx[torch.randperm(len(idx), generator=gen)[:per_class]]
              for idx in (torch.nonzero(labels == k).squeeze(1) for k in labels.unique())]
    index = torch.cat(picked)
    return data.as_float(inference.pick(data.train, index, device)), labels[index].to(device)


def classifier(run: TrainedRun, weights: str, classes: int, seed: int) -> Classifier:
    """The run's encoder (``pre-trained``) or the same network re-initialised (``random``: each
    layer's own ``reset_parameters``, as a new run starts), with a linear head that ``seed``
    initialises the same way for both."""
    torch.manual_seed(seed)
    encoder = copy.deepcopy(run.model)
    if weights == "random":
        for layer in encoder.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    torch.manual_seed(seed)
    return Classifier(encoder, classes).to(run.device)


def fit(model: Classifier, x: Tensor, y: Tensor, steps: int, lr: float, seed: int, batch_size: int = 256) -> None:
    """``steps`` Adam steps of cross-entropy on batches of (x, y) (the whole set when it fits one),
    encoder and head together."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(x), generator=gen)[:batch_size].to(x.device)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


@torch.no_grad()
def test_accuracy(run: TrainedRun, model: Classifier, data: ImageData, keep: Tensor) -> float:
    """The accuracy over the test images ``keep`` marks."""
    predicted = torch.cat([model(x).argmax(1) for x in inference.float_batches(run, data.test, data.max_value, "test")])
    return float((predicted.cpu() == data.labels["test"])[keep].double().mean())


def report(run: TrainedRun, args: argparse.Namespace, accuracy: dict[str, list[float]], n_labelled: int,
           unconverged: Sequence[str] = (), test_images: int | None = None) -> None:
    """The accuracy table, the gain from pre-training, the probes that stopped before
    converging, and the JSON record."""
    n = args.labels_per_class
    print(f"{type(run.model).__name__}, {n} label{'s' if n > 1 else ''} per class ({n_labelled} images), "
          f"{args.steps} Adam steps at lr {args.lr:g}, test accuracy over {args.seeds} seed(s) (mean ± sd):")
    print(commands.table([[name, mean_sd(v)] for name, v in accuracy.items()], ["encoder", "test accuracy"]))
    pretrained, random = (accuracy[name] for name in TRAINED)
    gain = [p - r for p, r in zip(pretrained, random)]  # paired: same labelled images and head per seed
    print(f"pre-training gains {mean_sd(gain, '+')} in test accuracy (fine-tuned minus random init, paired by seed)")
    for name in unconverged:
        print(f"note: {name}: the logistic regression stopped at {probes.PROBE_MAX_ITER} lbfgs iterations before "
              "converging (for some seed): the accuracy of that early-stopped fit")
    path = commands.out_dir(args, run) / f"finetune_{n}_per_class.json"
    rundir.write_json(path, {"labels_per_class": n, "labelled_images": n_labelled, "steps": args.steps,
                             "lr": args.lr, "seeds": args.seeds, "test_images": test_images,
                             "test_accuracy": accuracy, "pretraining_gain": gain,
                             "probe_max_iter": probes.PROBE_MAX_ITER, "probe_unconverged": list(unconverged)})
    commands.wrote(path)


def mean_sd(values: list[float], sign: str = "") -> str:
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{sign}.3f}{sd}"

