"""The CUDA-graph step on the CPU: its decisions (``trainer.cuda_graph`` x on_nan x compile x
DDP) and its bookkeeping, with ``EagerReplay`` standing in for CUDA graphs. The stand-in records
and replays the same body the graph records, so what is tested here is the graph step's own
logic: warm-up undone, one recording per batch size, sums owned by the step and carried across
a resume, the first non-finite step, the scaler's state. (The graphs themselves: tests/test_gpu.py.)"""
from __future__ import annotations

import pytest
import torch

from aecli.errors import ConfigError
from aecli.training.build import build_parts, new_state, uses_cuda_graph
from aecli.training.distributed import World
from aecli.training.graph_step import EagerReplay, GraphStep
from aecli.training.state import EpochState
from aecli.training.step import Step, check_finite

from .conftest import quick_cfg

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("setting,on_nan,compile_,world,device,expected", [
    ("auto", "stop", False, World(), CUDA, True),
    ("auto", "stop", False, World(), CPU, False),  # no CUDA: never
    ("true", "stop", False, World(), CPU, False),
    ("false", "stop", False, World(), CUDA, False),
    ("auto", "skip_batch", False, World(), CUDA, False),  # a host check per step cannot be captured
    ("auto", "stop", True, World(), CUDA, False),  # nor a compiled step
    ("auto", "stop", False, World(0, 2, 0, 2), CUDA, False),  # nor DDP's all-reduce
    ("true", "stop", False, World(), CUDA, True),
])
def test_when_the_step_is_a_graph(setting, on_nan, compile_, world, device, expected):
    cfg = quick_cfg(f"trainer.cuda_graph={setting}", f"trainer.on_nan={on_nan}", f"trainer.compile={compile_}")
    assert uses_cuda_graph(cfg, device, world) is expected


@pytest.mark.parametrize("setting", ["trainer.on_nan=skip_batch", "trainer.compile=true"])
def test_a_graph_that_cannot_hold_the_step_is_refused_when_asked_for(setting):
    with pytest.raises(ConfigError) as e:
        uses_cuda_graph(quick_cfg("trainer.cuda_graph=true", setting), CUDA, World())
    assert e.value.key == "trainer.cuda_graph"


def pair(*overrides: str):
    """An eager step and a graph step (on the stand-in) over the same model, initial weights and
    data: two states built from one seed."""
    cfg = quick_cfg("model=vae", "noise=gaussian", *overrides)
    steps = []
    for kind in (Step, GraphStep):
        parts = build_parts(cfg)
        state = new_state(parts, cfg)
        phase = state.phases[-1]
        args = (phase, parts.recon, parts.precision, state.scaler, parts.data.as_float)
        steps.append(GraphStep(*args, recorder=EagerReplay) if kind is GraphStep else Step(*args))
    return parts.data, steps


def epoch(step: Step, data, perm: torch.Tensor, batch_size: int, first: int = 0, carried=None) -> list[float]:
    """One pass over ``perm`` in batches; the losses it returned."""
    step.begin_epoch(EpochState(perm=perm, carried=carried or {}), first)
    losses = []
    for i in range(0, len(perm), batch_size):
        losses.append(float(step(data.train[perm[i:i + batch_size]], first + i // batch_size + 1)["loss"]))
    return losses


def weights(step: Step) -> list[torch.Tensor]:
    return [p.detach().clone() for p in step.phase.module.parameters()]


def test_the_graph_step_trains_exactly_like_the_eager_step():
    """Same losses, sums and weights over two epochs whose last batch is smaller (two recordings,
    one per batch size): the warm-up and the recording leave no trace."""
    data, (eager, graph) = pair()
    torch.manual_seed(0)
    before = weights(graph)
    for e in range(2):
        perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(e))
        torch.manual_seed(10 + e)
        a = epoch(eager, data, perm, 128, first=e * 10)
        torch.manual_seed(10 + e)
        b = epoch(graph, data, perm, 128, first=e * 10)
        assert a == b
        assert eager.totals().keys() == graph.totals().keys() == {"loss", "recon", "kl"}
        for k in eager.totals():
            assert torch.equal(eager.totals()[k], graph.totals()[k]), k
    assert sorted(graph.graphs) == [len(data.train) % 128, 128]
    assert all(torch.equal(x, y) for x, y in zip(weights(eager), weights(graph)))
    assert not all(torch.equal(x, y) for x, y in zip(before, weights(graph)))  # it did train


def test_recording_changes_nothing():
    data, (_, graph) = pair()
    graph.begin_epoch(EpochState(perm=torch.arange(64)), 0)
    before, rng = weights(graph), torch.get_rng_state()
    graph.capture(data.train[:32])
    assert all(torch.equal(x, y) for x, y in zip(before, weights(graph)))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(float(v) == 0 for v in graph.totals().values()) and int(graph.first_bad) == -1


def test_a_resumed_epoch_carries_its_sums_into_the_graph():
    data, (eager, graph) = pair()
    perm = torch.arange(256)
    carried = {"loss": torch.tensor(1000.0), "recon": torch.tensor(900.0), "kl": torch.tensor(100.0)}
    torch.manual_seed(3)
    epoch(eager, data, perm, 128, first=5, carried=dict(carried))
    torch.manual_seed(3)
    epoch(graph, data, perm, 128, first=5, carried=dict(carried))
    for k in carried:
        assert torch.equal(eager.totals()[k], graph.totals()[k]) and graph.totals()[k] > carried[k]


def test_the_first_non_finite_step_is_noted_on_the_device():
    data, (_, graph) = pair()
    graph.begin_epoch(EpochState(perm=torch.arange(384)), 0)
    graph(data.train[:128], 1)
    with torch.no_grad():
        next(graph.phase.module.parameters()).fill_(float("nan"))  # every step from here on is bad
    graph(data.train[128:256], 2)
    graph(data.train[256:384], 3)
    assert int(graph.first_bad) == 2
    with pytest.raises(Exception, match="step 2"):
        check_finite(graph)


def test_the_fp16_scaler_state_is_restored_after_the_warm_up():
    """fp16's GradScaler (its public state_dict, refilled in place): the warm-up steps that the
    recording undoes leave its scale and growth tracker as they were."""
    data, (_, graph) = pair("trainer.precision=16")
    assert graph.scaler.is_enabled()
    graph.begin_epoch(EpochState(perm=torch.arange(64)), 0)
    graph.init_state(data.train[:32])
    scale = graph.scaler._scale  # the tensor a graph would hold
    before = graph.scaler.state_dict()
    graph.capture(data.train[:32])
    assert graph.scaler.state_dict() == before and graph.scaler._scale is scale
