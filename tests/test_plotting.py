"""Loss and learning-rate plots: valid PNGs of the intended size with something drawn on them."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from shared.pipeline.plotting import DPI, FIGSIZE_IN, plot_loss_comparison, plot_lr_schedule
from shared.train.trainlog import read_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED_SIZE = (int(FIGSIZE_IN[0] * DPI), int(FIGSIZE_IN[1] * DPI))


def make_run(tmp_path, name, backend, offset=0.0, with_lr=True, steps=60):
    records = []
    for step in range(1, steps + 1):
        record = {"kind": "train", "step": step, "epoch": 1, "loss": 4 * math.exp(-step / 20) + 1 + offset,
                  "backend": backend}
        if with_lr:
            record["lr"] = 2e-4 * min(1.0, step / 10) * (1 - step / (steps + 1))
        records.append(record)
        if step % 20 == 0:
            records.append({"kind": "valid", "step": step, "valid_loss": 1.5 - step / 100 + offset})
    folder = tmp_path / name
    folder.mkdir()
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(folder)


def assert_drawn_png(path):
    """A PNG of EXPECTED_SIZE that has more on it than a background colour."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == EXPECTED_SIZE
        pixels = np.asarray(image.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 20, "image is (nearly) blank"
    background = (pixels == 255).all(axis=2).mean()
    assert 0.3 < background < 0.99, f"{background:.0%} of the image is white"
    leftovers = [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.fixture
def two_logs(tmp_path):
    return (read_log(make_run(tmp_path, "a", "torch")),
            read_log(make_run(tmp_path, "b", "jittor", offset=1e-3)))


def has_colour(path, rgb, tol=10):
    """Whether some pixel is close to `rgb` (matplotlib's C0..C3 line colours)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return bool((np.abs(pixels - np.array(rgb)).max(axis=2) <= tol).any())


C0, C1, C2 = (31, 119, 180), (255, 127, 14), (44, 160, 44)


def test_loss_comparison_of_two_runs(tmp_path, two_logs):
    out = plot_loss_comparison(*two_logs, tmp_path / "plots" / "loss.png", title="torch vs jittor")
    assert out == str(tmp_path / "plots" / "loss.png")
    assert_drawn_png(out)
    assert has_colour(out, C0) and has_colour(out, C1) and has_colour(out, C2)  # both + diff


def test_loss_plot_of_one_run(tmp_path, two_logs):
    out = plot_loss_comparison(two_logs[0], None, tmp_path / "one.png")
    assert_drawn_png(out)
    assert has_colour(out, C0) and not has_colour(out, C2)  # no difference panel


def test_loss_comparison_without_common_steps(tmp_path):
    a = read_log(make_run(tmp_path, "a", "torch", steps=10))
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    (b_dir / "train_log.jsonl").write_text('{"kind": "train", "step": 100, "loss": 1.0}\n')
    assert_drawn_png(plot_loss_comparison(a, read_log(str(b_dir)), tmp_path / "loss.png"))


def test_lr_schedule(tmp_path, two_logs):
    assert_drawn_png(plot_lr_schedule(list(two_logs), tmp_path / "lr.png"))
    no_lr = read_log(make_run(tmp_path, "c", "torch", with_lr=False))
    out = plot_lr_schedule([no_lr], tmp_path / "no_lr.png")
    with Image.open(out) as image:
        assert image.size == EXPECTED_SIZE
    assert not has_colour(out, C0)


def test_overwrites_an_existing_plot(tmp_path, two_logs):
    out = tmp_path / "loss.png"
    out.write_bytes(b"old")
    plot_loss_comparison(*two_logs, out)
    assert_drawn_png(str(out))


def test_plot_loss_script(tmp_path):
    a, b = make_run(tmp_path, "a", "torch"), make_run(tmp_path, "b", "jittor", offset=0.01)
    script = os.path.join(ROOT, "scripts", "plot_loss.py")
    out, lr_out = tmp_path / "loss.png", tmp_path / "lr.png"
    proc = subprocess.run([sys.executable, script, a, b, "--labels", "pt", "jt", "--out", str(out),
                           "--lr_out", str(lr_out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert_drawn_png(str(out))
    assert_drawn_png(str(lr_out))
    proc = subprocess.run([sys.executable, script, a, "--out", str(tmp_path / "single.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert_drawn_png(str(tmp_path / "single.png"))
    proc = subprocess.run([sys.executable, script, a, str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such log file or run folder" in proc.stderr
    proc = subprocess.run([sys.executable, script, a, b, "--labels", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--labels needs 2" in proc.stderr
