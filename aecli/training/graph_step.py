"""The whole training step as one CUDA graph (``trainer.cuda_graph``).

A small autoencoder's step is a few dozen tiny kernels: launched one by one from Python, the
GPU waits on the host most of the time (measured on an H200: a hand-written eager loop of the
784-400-20 VAE at 60,000 images/s, 2.1 ms per step; the same step as one graph 347,000 images/s,
0.37 ms). ``GraphStep`` records everything a step does once, per batch size (the full batches and
the last, smaller one: two graphs sharing one memory pool), and replays it:

    uint8 batch -> float (-> the phase's inputs) -> noise -> forward -> loss -> backward ->
    optimizer step (capturable Adam; the GradScaler's in-device checks for fp16) -> the epoch's
    loss sums and the first non-finite step, on the device

so a training step costs the host one gather of the batch, one copy into the graph's input
buffer and one replay. Random numbers (noise, the VAE's sampling) come from the same generator
as in eager mode, but the graph draws them in its own order: the stream differs from an eager
run's (same statistics; the tests check the noise's), and a run is reproducible with itself.

Capturing needs the optimizer state to exist and a few warm-up steps (cuBLAS and cuDNN set up
their workspaces); those steps are undone (parameters, optimizer and scaler state, sums, RNG
restored in place), so the first replayed step is the run's first step.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from aecli.losses import ReconstructionLoss
from aecli.training.state import EpochState, Phase
from aecli.training.step import Precision, Step

WARMUP_STEPS = 3  # eager steps on a side stream before capture (PyTorch's recipe for whole-step graphs)


Body = Callable[[], dict[str, Tensor]]


class Recorder(Protocol):
    """What ``GraphStep`` needs of CUDA: the device RNG, a side stream for the warm-up, and
    recording a body once to replay it. ``CudaGraphs`` is the real thing; ``EagerReplay`` is
    its stand-in on any device (the tests run the graph step's bookkeeping on the CPU)."""

    def get_rng(self) -> Any: ...
    def set_rng(self, state: Any) -> None: ...
    def side_stream(self) -> Any: ...
    def record(self, body: Body) -> tuple[Callable[[], None], dict[str, Tensor]]: ...


class CudaGraphs:
    """CUDA graphs sharing one memory pool (one graph per batch size)."""

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()

    def get_rng(self) -> Tensor:
        return torch.cuda.get_rng_state()

    def set_rng(self, state: Tensor) -> None:
        torch.cuda.set_rng_state(state)

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def record(self, body: Body) -> tuple[Callable[[], None], dict[str, Tensor]]:
        """Capture ``body`` (nothing runs: the kernels are recorded); replay runs them again."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            terms = body()
        return graph.replay, terms


class EagerReplay:
    """A stand-in for ``CudaGraphs`` on any device: ``record`` runs the body once to learn its
    outputs and undoes it (a capture changes nothing), and a replay runs the body eagerly and
    writes its outputs into the recorded tensors, as a graph replay writes its static outputs."""

    def __init__(self, step: GraphStep) -> None:
        self.step = step

    def get_rng(self) -> None:
        return None

    def set_rng(self, state: None) -> None:
        pass

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        yield

    def record(self, body: Body) -> tuple[Callable[[], None], dict[str, Tensor]]:
        saved, rng = self.step.snapshot(), torch.get_rng_state()
        terms = body()
        self.step.restore(saved)
        torch.set_rng_state(rng)

        def replay() -> None:
            self.step.optimizer.zero_grad(set_to_none=True)  # a graph's backward writes fresh grads
            for k, v in body().items():
                terms[k].copy_(v)

        return replay, terms


@dataclass
class Captured:
    replay: Callable[[], None]  # one replay of the recorded step
    raw: Tensor  # the input buffer the graph reads (a uint8 batch)
    terms: dict[str, Tensor]  # the loss terms the graph writes
    grads: list[Tensor]  # the gradients it writes: kept alive, so no later capture reuses their memory


class GraphStep(Step):
    """A ``Step`` replayed as a CUDA graph; ``__call__``'s contract is the eager step's.
    ``recorder``: how steps are recorded and replayed (default: CUDA graphs)."""

    first_bad: Tensor  # the graphs write it: it exists from the start (the eager step's from begin_epoch)

    def __init__(self, phase: Phase, recon: ReconstructionLoss, precision: Precision, scaler: torch.amp.GradScaler,
                 to_float: Callable[[Tensor], Tensor],
                 recorder: Callable[[GraphStep], Recorder] = lambda step: CudaGraphs()) -> None:
        super().__init__(phase, recon, precision, scaler, to_float)
        device = next(phase.module.parameters()).device
        self.graphs: dict[int, Captured] = {}
        self.recorder = recorder(self)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # written by the graphs
        self.step_count = torch.zeros((), dtype=torch.long, device=device)  # the global step, on the device
        self.carried: dict[str, Tensor] = {}  # the epoch's sums so far, until the first capture names them

    def begin_epoch(self, es: EpochState, step: int) -> None:
        """The graphs' accumulators (the same tensors every epoch: the graphs write them) start
        from what ``es`` carries."""
        self.carried = es.hand_over()
        for k, v in self.sums.items():
            v.copy_(self.carried[k]) if k in self.carried else v.zero_()
        self.first_bad.fill_(-1)
        self.step_count.fill_(step)  # steps done; each replay counts its own

    def body(self, raw: Tensor) -> dict[str, Tensor]:
        """Everything one step does (what the graph records)."""
        x = self.prepare(raw)
        terms = self.losses(x)
        self.update(terms["loss"])
        terms = {k: v.detach() for k, v in terms.items()}
        self.step_count.add_(1)
        for k, v in terms.items():
            self.sums[k].add_(v.float() * x.shape[0])
        bad = (self.first_bad < 0) & ~torch.isfinite(terms["loss"])
        self.first_bad.copy_(torch.where(bad, self.step_count, self.first_bad))
        return terms

    def __call__(self, raw: Tensor, step: int) -> dict[str, Tensor]:
        captured = self.graphs.get(raw.shape[0]) or self.capture(raw)
        captured.raw.copy_(raw, non_blocking=True)
        captured.replay()
        return captured.terms

    def capture(self, raw: Tensor) -> Captured:
        """Record the step for batches of ``raw``'s size; the warm-up leaves no trace (nor does
        the probe that names the loss terms: the RNG states are taken before it)."""
        rng = self.recorder.get_rng(), torch.get_rng_state()
        self.init_state(raw)
        saved = self.snapshot()
        with self.recorder.side_stream():
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self.body(raw)
        self.restore(saved)
        self.recorder.set_rng(rng[0])
        torch.set_rng_state(rng[1])
        static_raw = raw.clone()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates .grad in the graph's pool
        replay, terms = self.recorder.record(lambda: self.body(static_raw))
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.graphs[raw.shape[0]] = Captured(replay, static_raw, terms, grads)
        return self.graphs[raw.shape[0]]

    def init_state(self, raw: Tensor) -> None:
        """Create what the graph must find in place: the loss sums (named by a probe of the
        loss, under no_grad) and Adam's state (one step with zero gradients, then zeroed again:
        the state tensors exist, the parameters and the step count are as they were)."""
        if not self.sums:
            with torch.no_grad():
                names = list(self.losses(self.prepare(raw)))
            device = self.first_bad.device
            self.sums = {k: torch.zeros((), device=device) for k in names}
            for k in self.sums.keys() & self.carried.keys():  # a resumed epoch's sums so far
                self.sums[k].copy_(self.carried[k])
        if self.scaler.is_enabled():
            self.scaler.scale(torch.ones((), device=self.first_bad.device))  # creates its scale tensors
        optimizer = self.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if all(p in optimizer.state and optimizer.state[p] for p in params):
            return
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        with torch.no_grad():
            for p, b in zip(params, before):
                p.copy_(b)
                for t in optimizer.state[p].values():
                    if torch.is_tensor(t):
                        t.zero_()

    def snapshot(self) -> dict:
        """Copies of everything a warm-up step changes in place."""
        optimizer = self.optimizer
        tensors = [p for group in optimizer.param_groups for p in group["params"]]
        tensors += [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        tensors += [*self.sums.values(), self.first_bad, self.step_count]
        # the model's buffers: a schedule's step count, a codebook's EMA statistics, BatchNorm's running stats
        tensors += list(self.phase.module.buffers())
        # the scaler's public state (its load_state_dict refills its tensors in place, which the graph keeps)
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        return {"tensors": [(t, t.detach().clone()) for t in tensors], "scaler": scaler}

    def restore(self, saved: dict) -> None:
        with torch.no_grad():
            for t, copy in saved["tensors"]:
                t.copy_(copy)
        if saved["scaler"] is not None:
            self.scaler.load_state_dict(saved["scaler"])
