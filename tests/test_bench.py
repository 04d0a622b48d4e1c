"""The benchmark compares like with like: the classic loop and aecli's path train the same
model the same way (correctness here; speed is what ``python -m aecli.bench`` prints)."""
import copy
import re
import subprocess

import pytest
import torch

from aecli import cli
from aecli.data import ImageData
from aecli.losses import BinaryCrossEntropy
from aecli.models import VAE, ConvAutoencoder
from aecli.training import bench
from aecli.training.hooks import Hook

from .conftest import make_cfg


@pytest.fixture(scope="module")
def digits28():
    data, _ = bench.load_data("digits", "data", repeat=1)
    return data


def test_digits_are_upsampled_to_mnist_shape(digits28):
    assert digits28.shape == (1, 28, 28)
    assert digits28.train.dtype == torch.uint8
    assert digits28.train.max() == 255 and digits28.train.min() == 0
    x = digits28.as_float(digits28.train)
    assert 0.1 < x.mean() < 0.5  # digit strokes on a dark background, like MNIST


def test_classic_vae_is_the_same_network_as_aecli_vae():
    torch.manual_seed(0)
    vae = VAE((1, 28, 28), hidden_dims=[400], latent_dim=20)
    classic = bench.ClassicVAE.from_aecli(vae)
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(1)
    ours = vae.loss(x, x, BinaryCrossEntropy())["loss"]
    torch.manual_seed(1)
    theirs = classic.loss(x) / len(x)  # the example sums over the batch
    assert theirs.item() == pytest.approx(ours.item(), rel=1e-5)
    back = dict(classic.to_aecli(VAE((1, 28, 28), hidden_dims=[400], latent_dim=20)).named_parameters())
    assert back.keys() == dict(vae.named_parameters()).keys()
    for key, value in vae.named_parameters():  # every weight back where it came from (buffers are the VAE's own)
        assert torch.equal(value, back[key]), key


def test_classic_vae_copies_by_state_dict_key_and_refuses_another_shape():
    """The copy goes by name: a VAE whose layers differ from the example's is refused with the
    keys it has, not copied layer by layer into whatever sits at the same index."""
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), hidden_dims=[16], latent_dim=4)
    classic = bench.ClassicVAE.from_aecli(vae)
    state = vae.state_dict()
    assert torch.equal(classic.fc1.weight, state["encoder.0.weight"])
    assert torch.equal(classic.fc22.bias, state["to_stats.bias"][4:])  # the log-variance half
    assert torch.equal(classic.fc4.weight, state["decoder.2.weight"])
    with pytest.raises(ValueError, match="one hidden layer.*decoder.4.weight"):
        bench.ClassicVAE.from_aecli(VAE((1, 8, 8), hidden_dims=[16, 8], latent_dim=4))


@pytest.mark.parametrize("kind", ["vae", "conv"])
def test_fast_path_follows_the_classic_loop_step_by_step(kind, digits28):
    """Same seed, same initial weights, same batch order: the per-step losses of the DataLoader
    baseline and of aecli's ``train_epoch`` agree (the loop changes speed, not the training)."""
    data = ImageData(digits28.train[:512], digits28.val, digits28.test)
    torch.manual_seed(0)
    if kind == "vae":
        model = VAE((1, 28, 28), hidden_dims=[400], latent_dim=20)
        classic = bench.ClassicVAE.from_aecli(model)
    else:
        model = ConvAutoencoder((1, 28, 28), channels=[8, 16], latent_dim=8)
        classic = bench.ClassicAE(copy.deepcopy(model))
    batch = 64
    perm = torch.randperm(len(data.train))

    baseline: list[float] = []
    torch.manual_seed(123)
    bench.classic_epoch(classic, torch.optim.Adam(classic.parameters(), lr=1e-3),
                        bench.classic_loader(data.train, batch, torch.device("cpu"), sampler=perm.tolist()),
                        torch.device("cpu"), on_step=baseline.append)
    if kind == "vae":
        baseline = [v / batch for v in baseline]  # summed over the batch there, a mean here

    overrides = ["model=vae", "model.hidden_dims=[400]", "model.latent_dim=20"] if kind == "vae" else \
        ["model=conv", "model.channels=[8,16]", "model.latent_dim=8", "loss=mse"]
    cfg = make_cfg(*overrides, "noise=none", f"trainer.batch_size={batch}", "device=cpu")
    ours: list[float] = []

    class Losses(Hook):
        def on_step_end(self, run, terms):
            ours.append(terms["loss"].item())

    torch.manual_seed(0)  # the same initial weights as the classic model's
    model, _, one_epoch = bench.aecli_epoch(cfg, data, torch.device("cpu"), hooks=[Losses()])
    torch.manual_seed(123)
    one_epoch(perm.clone())

    assert len(ours) == len(baseline) == 512 // batch
    assert ours[-1] < ours[0]  # it trains
    assert ours == pytest.approx(baseline, rel=1e-4)


def test_flop_count_of_the_mnist_vae_step():
    """784-400-20: forward 2 x 651,200 MACs; backward the weight gradients of all layers and the
    input gradients of all but the first: 3.28 MFLOP per image per step."""
    model = VAE((1, 28, 28), hidden_dims=[400], latent_dim=20)
    assert bench.step_flops_per_image(model, torch.rand(32, 1, 28, 28), BinaryCrossEntropy()) == 3_280_000


def table_rows(out: str) -> dict[str, re.Match]:
    return {m["path"]: m for m in re.finditer(
        r"\| mlp-vae-128 \| (?P<path>\w+) \| (?P<threads>\d+) \| (?P<ips>[\d,]+) \| (?P<loss>[\d.]+) "
        r"nats/image \| (?P<ratio>[\d.]+)x \| (?P<roof>\d+)% \|", out)}


def test_bench_command_prints_a_table_of_both_paths(capsys):
    cli.main(["bench", "--cases", "mlp-vae-128", "--epochs", "1", "--repeat", "1", "--startup-runs", "0"])
    out = capsys.readouterr().out
    header = re.search(r"fp32 matmul ([\d.]+) GFLOP/s", out)
    assert header and float(header.group(1)) > 0
    rows = table_rows(out)
    assert set(rows) == {"baseline", "aecli"}
    ips = {path: int(r["ips"].replace(",", "")) for path, r in rows.items()}
    assert float(rows["aecli"]["ratio"]) == pytest.approx(ips["aecli"] / ips["baseline"], rel=0.01)  # both rounded
    for r in rows.values():
        assert int(r["ips"].replace(",", "")) > 0
        assert 0 < int(r["roof"]) <= 100
    # equal epochs, same data and initial weights: models of the same quality
    assert float(rows["aecli"]["loss"]) == pytest.approx(float(rows["baseline"]["loss"]), rel=0.05)


@pytest.mark.parametrize("argv, first", [
    (["--dataset", "mnist", "--data-root", "."], "aecli: error: --data-root: mnist is not under"),
    (["--aecli", "trainer.compil=true"], "aecli: error: --aecli: trainer.compil=true: Could not override"),
])
def test_bench_refuses_bad_input_in_one_message(argv, first, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--cases", "mlp-vae-128", "--startup-runs", "0", *argv]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(first) and len(err.strip().splitlines()) == 2 and "Traceback" not in err
    assert "dataset.download=true" not in err.splitlines()[1] or "aecli train" in err.splitlines()[1]
    assert out == ""  # refused before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_bench_on_cuda_without_a_gpu_names_the_flag(capsys):
    assert cli.main(["bench", "--device", "cuda", "--startup-runs", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aecli: error: --device:") and "use --device cpu" in err


def test_bench_hog_prints_a_quiet_and_a_loaded_table_and_stops_its_hogs(capsys, monkeypatch):
    """--hog 2: the comparison (faked here: the real one is timed above) runs again while two
    busy loops run beside it; both tables are printed and no busy loop is left running."""
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if "while True: pass" in args[0]:
                started.append(self)

    def fake_case(name, data, device, epochs, extra=()):
        running = sum(p.poll() is None for p in started)
        return (bench.PathResult(100.0, 1.0, 2), bench.PathResult(300.0 + running, 1.0, 1), 1e6, "nats/image")

    monkeypatch.setattr(bench.subprocess, "Popen", Recorded)
    monkeypatch.setattr(bench, "bench_case", fake_case)
    assert cli.main(["bench", "--cases", "mlp-vae-128", "--repeat", "1", "--startup-runs", "0", "--hog", "2"]) == 0
    out = capsys.readouterr().out
    quiet, loaded = out.split("\nquiet\n")[1].split("\nloaded: 2 busy-loop process(es) beside it\n")
    assert table_rows(quiet)["aecli"]["ips"] == "300" and table_rows(loaded)["aecli"]["ips"] == "302"
    assert table_rows(loaded)["aecli"]["threads"] == "1" and table_rows(loaded)["baseline"]["threads"] == "2"
    assert len(started) == 2 and all(p.poll() is not None for p in started)  # started, and stopped
