"""The folder dataset never lies: unreadable files, 16-bit and colour handling, the cache, ~."""
from __future__ import annotations

import concurrent.futures
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.errors import OverrideParseException
from PIL import Image

from aecli import config
from aecli.data import ImageFiles, decode, load_folder
from aecli.data import cache as foldercache
from aecli.errors import ConfigError
from tests.conftest import make_cfg

RNG = np.random.default_rng(0)


def rgb(n: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (n, n, 3), dtype=np.uint8)


def write_pngs(folder, count: int, size: int = 8, start: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.png" for i in range(start, start + count)]
    for p in paths:
        Image.fromarray(rgb(size)).save(p)
    return paths


def load(folder, **kw):
    kw = {"image_size": 8, "channels": 3, "val_fraction": 0.2, "test_fraction": 0.2, **kw}
    return load_folder(str(folder), **kw)


def all_images(data) -> torch.Tensor:
    return torch.cat([data.train, data.val, data.test])


def log_counts(caplog) -> tuple[int, int]:
    """(decoded, from the cache) of the last load, from its log line."""
    line = [r.getMessage() for r in caplog.records if "from the cache" in r.getMessage()][-1]
    words = line.replace(",", "").split()
    return int(words[words.index("decoded") - 1]), int(words[words.index("from") - 1])


# --- unreadable files ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """25 good PNGs, one truncated, one that is no image at all, and hidden files and folders."""
    folder = tmp_path_factory.mktemp("damaged")
    write_pngs(folder, 25)
    whole = (folder / "000.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "._000.png").write_bytes(b"\0\5\26\7")  # AppleDouble companion: hidden, ignored
    write_pngs(folder / ".thumbnails", 2)  # hidden folder: ignored
    return folder


def test_unreadable_files_are_skipped_named_and_counted(damaged, caplog):
    with caplog.at_level(logging.WARNING, logger="aecli"):
        data = load(damaged, cache=False)
    assert len(all_images(data)) == 25
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "2 of 27 image files" in warning and "cut.png" in warning and "notes.jpg" in warning
    assert "._000.png" not in warning and "on_bad_image=fail" in warning
    # each module logs under its own name, below "aecli" (Hydra's handlers and --verbose reach it)
    assert {r.name for r in caplog.records if r.levelno == logging.WARNING} == {"aecli.data.sources"}


def test_fail_mode_names_the_file_and_not_the_config(damaged):
    cfg = make_cfg("dataset=folder", f"dataset.root={damaged}", "dataset.on_bad_image=fail",
                   "dataset.image_size=8", "dataset.cache=false")
    from aecli.components import load_data

    with pytest.raises(ConfigError) as e:
        load_data(cfg)  # as the trainer builds it: the loader's own message passes through
    assert e.value.key == "dataset.root" and "cut.png" in e.value.problem and "notes.jpg" in e.value.problem
    assert "conf/dataset" not in str(e.value) and "on_bad_image=skip" in e.value.fix


def test_streamed_folder_leaves_unreadable_files_out(damaged):
    data = load(damaged, max_memory_mb=0, cache=False)
    assert isinstance(data.train, ImageFiles) and len(data.train) + len(data.val) + len(data.test) == 25
    in_memory = load(damaged, cache=False)
    assert torch.equal(data.train[:], in_memory.train)  # same files, same pixels, same order


def test_streamed_folder_caches_which_files_decode_without_pixels(damaged, tmp_path, caplog):
    import shutil

    folder = shutil.copytree(damaged, tmp_path / "copy")
    caplog.set_level(logging.INFO, logger="aecli")
    load(folder, max_memory_mb=0)
    assert log_counts(caplog) == (27, 0)
    stored = torch.load(foldercache.cache_file(folder, 8, 3), weights_only=True)
    assert stored["images"] is None and sum(bool(p) for p in stored["problems"]) == 2
    data = load(folder, max_memory_mb=0)
    assert log_counts(caplog) == (0, 27) and len(data.train) + len(data.val) + len(data.test) == 25


def test_worker_processes_decode_the_same_and_report_problems(damaged, monkeypatch):
    files = sorted(str(p) for p in damaged.glob("[!.]*"))
    here, problems_here = decode.decode_files(files, 8, 3, workers=0)
    monkeypatch.setattr(decode, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(decode, "CHUNK", 4)
    contexts = []  # the start method of each pool: never fork (torch is imported, its threads run)

    class Pool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, mp_context=None, **kwargs):
            contexts.append(mp_context.get_start_method() if mp_context else None)
            super().__init__(*args, mp_context=mp_context, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Pool)
    pooled, problems_pooled = decode.decode_files(files, 8, 3, workers=2)
    assert np.array_equal(here, pooled) and problems_here == problems_pooled
    assert sum(bool(p) for p in problems_pooled) == 2
    assert len(contexts) == 1 and contexts[0] in ("forkserver", "spawn")


# --- pixel formats and colour ----------------------------------------------------------------

def decoded(tmp_path, img: Image.Image, channels: int = 3, name: str = "x.png", **save) -> np.ndarray:
    img.save(tmp_path / name, **save)
    return decode.decode_image(tmp_path / name, img.size[0], channels)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I")
    out = decoded(tmp_path, img, channels=1)
    assert abs(out.mean() - 127.5) < 1.0  # Pillow's own convert("L") gives ~254.5: 99.7% white
    assert out.min() == 0 and out.max() == 255
    assert decoded(tmp_path, Image.fromarray(np.full((4, 4), 32896, np.uint16)), 1).max() == 128  # 32896/257


def test_alpha_is_composited_on_black(tmp_path):
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[..., 0] = 200  # red everywhere, under alpha 0, 255, 128 and 64
    pixels[..., 3] = [[0, 255], [128, 64]]
    out = decoded(tmp_path, Image.fromarray(pixels, "RGBA"))
    assert out[0].tolist() == [[0, 200], [100, 50]]  # red premultiplied by alpha
    assert out[1:].max() == 0
    grey_alpha = decoded(tmp_path, Image.fromarray(pixels[..., [0, 3]], "LA"), channels=1)
    assert grey_alpha[0].tolist() == [[0, 200], [100, 50]]


def test_palette_images_with_a_transparent_entry(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # entry 0 blue, entry 1 green
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    assert decoded(tmp_path, img)[:, 0].T.tolist() == [[0, 0, 255], [0, 255, 0]]
    img.info["transparency"] = 0  # blue is transparent: black
    out = decoded(tmp_path, img, transparency=0)
    assert out[:, 0].T.tolist() == [[0, 0, 0], [0, 255, 0]]


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[0, 0] = 255  # one white pixel, top left as stored
    exif = Image.Exif()
    exif[decode.ORIENTATION] = 6  # "rotate 90 clockwise to display"
    out = decoded(tmp_path, Image.fromarray(pixels), name="x.jpg", exif=exif.tobytes(), quality=100)
    brightest = np.unravel_index(out[0].argmax(), out[0].shape)
    assert brightest == (0, 3)  # top right once displayed upright


def test_mixed_grey_and_colour_folder(tmp_path):
    colour, grey = rgb(8), RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    for i in range(3):
        Image.fromarray(colour).save(tmp_path / f"c{i}.png")
        Image.fromarray(grey).save(tmp_path / f"g{i}.png")
    as_rgb = all_images(load(tmp_path, cache=False, val_fraction=0.3, test_fraction=0.3))
    assert as_rgb.shape[1] == 3
    greys = [im for im in as_rgb if torch.equal(im[0], im[1]) and torch.equal(im[1], im[2])]
    assert len(greys) == 3 and torch.equal(greys[0][0], torch.from_numpy(grey))  # L repeated over R, G, B
    as_grey = all_images(load(tmp_path, channels=1, cache=False, val_fraction=0.3, test_fraction=0.3))
    luma = torch.from_numpy(np.array(Image.fromarray(colour).convert("L")))
    assert as_grey.shape[1] == 1 and sum(torch.equal(im[0], luma) for im in as_grey) == 3


# --- the cache ---------------------------------------------------------------------------------

def test_cache_is_read_then_refreshed_per_file_then_rebuilt_when_damaged(tmp_path, caplog):
    paths = write_pngs(tmp_path / "imgs", 30)
    folder = tmp_path / "imgs"
    caplog.set_level(logging.INFO, logger="aecli")
    first = all_images(load(folder))
    assert log_counts(caplog) == (30, 0)
    second = all_images(load(folder))
    assert log_counts(caplog) == (0, 30) and torch.equal(first, second)

    new = rgb(8)
    Image.fromarray(new).save(paths[5])  # changed: its size or mtime differs
    os.utime(paths[5], ns=(paths[5].stat().st_atime_ns, paths[5].stat().st_mtime_ns + 10**9))
    write_pngs(folder, 1, start=30)  # added
    paths[7].unlink()  # removed
    third = all_images(load(folder))
    assert log_counts(caplog) == (2, 28) and len(third) == 30
    assert any(torch.equal(im, torch.from_numpy(new).permute(2, 0, 1)) for im in third)

    cache = foldercache.cache_file(folder, 8, 3)
    raw = bytearray(cache.read_bytes())
    pixels_at = raw.find(third[0].flatten()[:16].numpy().tobytes())  # a byte inside the stored images
    raw[pixels_at] ^= 0xFF
    cache.write_bytes(bytes(raw))
    caplog.clear()
    fourth = all_images(load(folder))
    assert log_counts(caplog) == (30, 0) and torch.equal(fourth, third)
    assert any("CRC-32" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    cache.write_bytes(b"garbage")
    caplog.clear()
    assert torch.equal(all_images(load(folder)), third) and log_counts(caplog) == (30, 0)
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_cache_keeps_unreadable_files_known_and_settings_apart(damaged, caplog):
    caplog.set_level(logging.INFO, logger="aecli")
    load(damaged)
    load(damaged)
    assert log_counts(caplog) == (0, 27)  # the two bad files are remembered as bad
    with pytest.raises(ConfigError, match="cut.png"):
        load(damaged, on_bad_image="fail")  # named from the cache too
    load(damaged, image_size=4)
    assert log_counts(caplog) == (27, 0)  # another size: its own cache file
    assert sorted(p.name for p in (damaged / ".aecli-cache").iterdir()) == ["4px-rgb.pt", "8px-rgb.pt"]


def test_unwritable_cache_only_warns(tmp_path, caplog):
    write_pngs(tmp_path / "imgs", 10)
    (tmp_path / "imgs" / ".aecli-cache").write_text("a file where the cache folder goes")
    with caplog.at_level(logging.WARNING, logger="aecli"):
        data = load(tmp_path / "imgs")
    assert len(all_images(data)) == 10
    assert any("could not write the decoded-image cache" in r.getMessage() for r in caplog.records)


def test_small_dataset_warns(tmp_path, caplog):
    write_pngs(tmp_path, 12)
    with caplog.at_level(logging.WARNING, logger="aecli"):
        load(tmp_path, cache=False)
    assert any("noisy metrics" in r.getMessage() for r in caplog.records)


# --- dataset.root=~/... through Hydra's parser ---------------------------------------------------

def test_unquoted_tilde_gets_forms_that_work():
    with pytest.raises(OverrideParseException) as e:
        make_cfg("dataset=folder", "dataset.root=~/pictures")
    error = config.explain(e.value)
    assert error.key == "dataset.root" and "dataset.root=$HOME/pictures" in error.fix
    assert """'dataset.root="~/pictures"'""" in error.fix
    with pytest.raises(OverrideParseException) as e:
        make_cfg("dataset=folder", "dataset.root=/data/a~b")  # not a home dir: only quoting helps
    assert config.explain(e.value).fix == """quote it for Hydra: 'dataset.root="/data/a~b"'"""


def test_quoted_tilde_loads_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_pngs(tmp_path / "pictures", 10)
    cfg = make_cfg("dataset=folder", 'dataset.root="~/pictures"', "dataset.image_size=8")  # as the shell passes it
    assert cfg.dataset.root == "~/pictures"
    from aecli.components import load_data

    assert load_data(cfg).shape == (3, 8, 8)


@pytest.mark.integration
def test_cli_tilde_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([sys.executable, "-m", "aecli.train", "dataset=folder", "dataset.root=~/pictures"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("aecli: error: dataset.root:") and "$HOME/pictures" in done.stderr
    assert list(tmp_path.iterdir()) == []
