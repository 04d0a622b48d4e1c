"""TensorBoard hooks: per-step and per-epoch scalars, image grids (also written as PNG files at
the end; for vectors a corpus's top words and a table's worst columns instead), and the HParams
record of the finished run.

Every event is logged against the global step. A resumed run opens its writer with
``purge_step`` = the checkpoint's step + 1, so whatever the interrupted run logged after its
checkpoint is dropped and no step appears twice; the HParams record sits one step after the
last training step, so resuming a finished run replaces it instead of adding a second one.
"""
from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from aecli.config import noise_name
from aecli.data import batches
from aecli.figures import grid_figure, save_figure
from aecli.images import image_grid
from aecli.models import HasPrior
from aecli.store.atomic import atomic_write
from aecli.training.distributed import epoch_totals
from aecli.training.hooks import EpochResult, Hook, Run

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


log = logging.getLogger(__name__)


class StepScalars(Hook):
    """Every ``every`` steps, the mean loss terms per image since the last such point in the
    epoch, to TensorBoard (``<phase>_step/<term>_<unit>``). Read from the epoch's running sums,
    which the step keeps on the device (inside the CUDA graph when there is one): no work per
    step, one read at steps where the loop syncs anyway. The window's start is checkpointed, so
    the first value after a resume is the one the uninterrupted run logs."""

    state_key = "step_scalars"

    def __init__(self, writer: SummaryWriter, every: int) -> None:
        self.writer, self.every = writer, every
        self.start: dict[str, float] = {}  # the epoch's sums where the window began
        self.start_seen = 0

    def on_epoch_start(self, run: Run) -> None:
        assert run.state.epoch_state is not None, "run_epochs sets the epoch before its start"
        if run.state.epoch_state.batch == 0:
            self.start, self.start_seen = {}, 0  # each epoch starts its own window

    def on_step_end(self, run: Run, terms: dict[str, Tensor] | None) -> None:
        if run.state.step % self.every:
            return
        es, phase = run.state.epoch_state, run.phase
        assert es is not None and phase is not None, "steps run inside an epoch of a phase"
        sums, seen_total = epoch_totals(run.world, run.epoch_sums(), es.seen, es.perm.device)  # DDP: all ranks
        seen = seen_total - self.start_seen
        if seen <= 0:
            return
        tag = "train" if phase.main else phase.name
        for k, v in sums.items():
            self.writer.add_scalar(f"{tag}_step/{k}_{phase.unit}", (v - self.start.get(k, 0.0)) / seen,
                                   run.state.step)
        self.start, self.start_seen = sums, seen_total

    def state_dict(self) -> dict[str, Any]:
        return {"start": dict(self.start), "start_seen": self.start_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start = {k: float(v) for k, v in state.get("start", {}).items()}
        self.start_seen = int(state.get("start_seen", 0))


class EpochScalars(Hook):
    """Per epoch: ``train_epoch/<term>_<unit>`` (the epoch's running mean, noise included),
    ``val/<metric>`` (a clean pass over the validation set), ``epoch``, ``perf/images_per_sec``;
    pre-training stages: ``<stage>/loss_<unit>``."""

    def __init__(self, writer: SummaryWriter) -> None:
        self.writer = writer

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        step, phase = run.state.step, run.phase
        assert phase is not None, "an epoch belongs to a phase"
        prefix = "train_epoch" if phase.main else phase.name
        for k, v in result.means.items():
            self.writer.add_scalar(f"{prefix}/{k}_{phase.unit}", v, step)
        for k, v in (val or {}).items():
            self.writer.add_scalar(f"val/{k}", v, step)
        if phase.main:
            self.writer.add_scalar("epoch", run.state.epoch, step)
            self.writer.add_scalar("perf/images_per_sec", result.images_per_sec, step)
        self.writer.flush()

    def on_stop(self, run: Run) -> None:
        self.writer.flush()




class ImageGrids(Hook):
    """Each epoch of the main phase: a fixed validation batch | its corruption (when the noise
    changes anything) | the reconstruction of what the model was fed, and for a model with a
    prior (``HasPrior``) 16 samples from the same prior draws every epoch. At the end the
    last grids are also written as ``reconstruction.png`` and ``samples.png`` in the run dir."""

    def __init__(self, writer: SummaryWriter, n_images: int, seed: int) -> None:
        self.writer, self.n_images, self.seed = writer, n_images, seed
        self.grids: dict[str, Tensor] = {}
        self.rows: dict[str, list[Tensor]] = {}  # the same images, for the titled PNGs

    def on_fit_start(self, run: Run) -> None:
        self.off = not run.data.images  # vectors: ``VectorReport`` instead
        if self.off:
            return
        gen = torch.Generator().manual_seed(self.seed)
        self.clean = run.data.as_float(run.data.val[: self.n_images].to(run.device))
        self.noisy = None
        if run.noise.corrupts:  # corrupted once, under its own seed: the run's RNG is not drawn from
            with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                self.noisy = run.noise(self.clean.clone())
        self.prior_z = run.model.sample_latents(16, gen).to(run.device) if isinstance(run.model, HasPrior) else None

    @torch.no_grad()
    def draw(self, run: Run) -> None:
        model = run.model
        was_training = model.training
        model.eval()
        shown = self.noisy if self.noisy is not None else self.clean
        rows = [self.clean] + ([self.noisy] if self.noisy is not None else []) + [model.reconstruct(shown, run.recon)]
        name = "clean_corrupted_reconstructed" if self.noisy is not None else "clean_reconstructed"
        self.rows = {f"reconstruction/{name}": [r.cpu() for r in rows]}
        if self.prior_z is not None:
            samples = run.recon.output(model.decode(self.prior_z))
            self.rows["samples/prior"] = [samples[:8].cpu(), samples[8:].cpu()]
        self.grids = {tag: image_grid(rows) for tag, rows in self.rows.items()}
        model.train(was_training)

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        if val is None or self.off:
            return
        self.draw(run)
        for tag, grid in self.grids.items():
            self.writer.add_image(tag, grid, run.state.step)

    def on_fit_end(self, run: Run, metrics: dict[str, Any]) -> None:
        if self.off:
            return
        self.draw(run)  # the model metrics.json describes (the best one)
        who = f"{type(run.model).__name__} ({run.run_dir.name}, the model of metrics.json)"
        for tag, rows in self.rows.items():
            if tag.startswith("samples"):
                path, fig = run.run_dir / "samples.png", grid_figure(
                    rows, f"{who}: {sum(len(r) for r in rows)} images decoded from codes drawn from the prior N(0, I)")
            else:
                labels = ["clean"] + ([f"corrupted ({noise_name(run.noise)})"] if self.noisy is not None else []) \
                    + ["reconstructed" + (" from the corrupted" if self.noisy is not None else "")]
                path, fig = run.run_dir / "reconstruction.png", grid_figure(
                    rows, f"{who}: the first {len(rows[0])} validation images", row_labels=labels)
            save_figure(fig, path)
            log.info("wrote %s", path)


class VectorReport(Hook):
    """What replaces the image grids for vectors. A corpus: each epoch, a few validation
    documents' top input words next to their top reconstructed words (TensorBoard text; at the
    end also ``reconstruction_words.md``). A table: at the end, the validation split's
    reconstruction error per column, worst first, as a bar chart (``feature_errors.png`` and
    TensorBoard)."""

    WORDS, DOCUMENTS, COLUMNS = 8, 4, 20

    def __init__(self, writer: SummaryWriter) -> None:
        self.writer = writer

    def on_fit_start(self, run: Run) -> None:
        self.off = run.data.images or not run.data.features

    @torch.no_grad()
    def top_words(self, run: Run) -> str:
        """A markdown table: document | its top words | the reconstruction's top words."""
        x = run.data.as_float(run.data.val[: self.DOCUMENTS].to(run.device))
        was_training = run.model.training
        run.model.eval()
        rebuilt = run.model.reconstruct(x, run.recon)
        run.model.train(was_training)
        words = run.data.features
        assert words is not None, "on only for data with named features (on_fit_start)"
        names = run.data.names["val"] if run.data.names else [str(i) for i in range(len(x))]
        top = lambda v: ", ".join(words[j] for j in v.topk(min(self.WORDS, len(v))).indices.tolist()  # noqa: E731
                                  if v[j] > 0)
        rows = [f"| {names[i]} | {top(x[i])} | {top(rebuilt[i])} |" for i in range(len(x))]
        return "\n".join(["| document | top input words | top reconstructed words |", "|---|---|---|", *rows])

    def on_epoch_end(self, run: Run, result: EpochResult, val: dict[str, float] | None) -> None:
        if val is not None and not self.off and run.data.kind == "text":
            self.writer.add_text("reconstruction/top_words", self.top_words(run), run.state.step)

    @torch.no_grad()
    def feature_errors(self, run: Run) -> Tensor:
        """The validation split's mean squared reconstruction error per feature, (D,) on the CPU."""
        was_training = run.model.training
        run.model.eval()
        total = torch.zeros(run.data.shape, dtype=torch.float64)
        for _, b in batches(run.data.val, 1024, torch.arange(len(run.data.val), device=run.device)):
            x = run.data.as_float(b)
            total += (run.model.reconstruct(x, run.recon) - x).double().pow(2).sum(0).cpu()
        run.model.train(was_training)
        return total / len(run.data.val)

    def on_fit_end(self, run: Run, metrics: dict[str, Any]) -> None:
        if self.off:
            return
        if run.data.kind == "text":
            path = run.run_dir / "reconstruction_words.md"
            text = self.top_words(run) + "\n"
            atomic_write(path, lambda f: f.write(text.encode()))
        else:
            path = run.run_dir / "feature_errors.png"
            assert run.data.features is not None, "on only for data with named features (on_fit_start)"
            figure = error_bars(self.feature_errors(run), run.data.features, self.COLUMNS)
            self.writer.add_figure("reconstruction/feature_errors", figure, run.state.step, close=False)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            atomic_write(path, lambda f: f.write(buffer.getvalue()))
        log.info("wrote %s", path)


def error_bars(errors: Tensor, names: list[str], top: int) -> Any:
    """A matplotlib figure: the ``top`` features with the largest error, worst on top."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    order = errors.argsort(descending=True)[:top].tolist()[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(order) + 1.2))
    ax.barh([names[j] for j in order], [float(errors[j]) for j in order])
    ax.set(xlabel="mean squared reconstruction error (validation split, scaled units)",
           title=f"the {len(order)} worst-reconstructed of {len(names)} features")
    fig.tight_layout()
    return fig


class HParams(Hook):
    """The run's hyperparameters with its final metrics, for TensorBoard's HParams tab."""

    def __init__(self, writer: SummaryWriter, cfg: DictConfig, choices: dict[str, str]) -> None:
        self.writer, self.cfg, self.choices = writer, cfg, choices

    def on_fit_end(self, run: Run, metrics: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = run.state.step + 1  # after the last step: a resume purges it (see the module's doc)
        values = {f"hparam/{k.replace('/', '_')}": v for k, v in metrics.items()
                  if "/" in k and isinstance(v, (int, float))}
        exp, start, end = hparams(hparams_of(self.cfg, self.choices), values)
        for summary in (exp, start, end):
            # torch types file_writer by its initial None; SummaryWriter.__init__ opens it
            self.writer.file_writer.add_summary(summary, step)  # type: ignore[attr-defined]
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()


def hparams_of(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """Flat scalar hyperparameters for TensorBoard's HParams tab."""
    flat: dict[str, Any] = {f"choice/{k}": v for k, v in choices.items()}
    # to_container's stub allows any container; a DictConfig gives a dict
    container = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))

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


class NullWriter:
    """What ranks other than 0 of a DDP run log to: nothing (rank 0 writes the events)."""

    def __getattr__(self, name: str) -> Any:
        return self._nothing

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    @property
    def file_writer(self) -> NullWriter:
        return self


def open_writer(run_dir: Path, resumed_step: int | None) -> SummaryWriter:
    """The run's event writer; ``resumed_step``: purge what was logged after that step. A new run
    in a dir that already has events (a requeued job killed before its first checkpoint) purges
    them all."""
    from torch.utils.tensorboard import SummaryWriter

    before = set(Path(run_dir).glob("events.out.tfevents.*"))
    if resumed_step is None and before:
        resumed_step = 0
    wait_to_sort_last(before)
    try:
        return SummaryWriter(log_dir=str(run_dir), purge_step=None if resumed_step is None else resumed_step + 1)
    except OSError:  # a full disk: leave no empty event file behind
        for p in set(Path(run_dir).glob("events.out.tfevents.*")) - before:
            if p.stat().st_size == 0:
                p.unlink(missing_ok=True)
        raise


def wait_to_sort_last(existing: set[Path], most_s: float = 2.0) -> None:
    """TensorBoard purges (``purge_step``) only the events of files that sort before the new one,
    and an event file is named ``events.out.tfevents.SECONDS.HOST.PID``: a resume started in the
    same second as an earlier process with a larger pid would sort first and purge nothing. Wait
    (at most ``most_s``) until the clock is past every existing file's second."""
    seconds = [int(p.name.split(".")[3]) for p in existing if p.name.split(".")[3:4] and p.name.split(".")[3].isdigit()]
    if seconds:
        wait = max(seconds) + 1 - time.time()
        if 0 < wait <= most_s:
            time.sleep(wait)
