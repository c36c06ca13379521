"""Loss-curve and learning-rate plots of training logs (PNG, matplotlib's Agg renderer).

Figures are built on `matplotlib.figure.Figure` with an Agg canvas rather than through
`pyplot`, so plotting needs no display, keeps no global figure state and never changes the
backend of a program that imports this module. Files are written atomically.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shared.runtime.atomic import atomic_path
from shared.train.trainlog import TrainLog, align_steps

FIGSIZE_IN = (12, 8)
DPI = 100  # with FIGSIZE_IN: 1200 x 800 pixels


def _new_figure(nrows: int, height_ratios: Sequence[float]):
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": list(height_ratios)})[:, 0]
    return fig, axes


def _save(fig: Figure, out_png) -> str:
    out_png = os.fspath(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_png


def _note(ax, text: str):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def _plot_losses(ax, log: TrainLog, color: str):
    if log.train:
        ax.plot([r.step for r in log.train], [r.loss for r in log.train], color=color,
                linewidth=1.0, label=f"{log.label} train")
    if log.valid:
        ax.plot([r.step for r in log.valid], [r.valid_loss for r in log.valid], color=color,
                linestyle="--", marker="o", markersize=4, label=f"{log.label} valid")


def _plot_difference(ax, log_a: TrainLog, log_b: TrainLog):
    train = align_steps(log_a, log_b, "train")
    valid = align_steps(log_a, log_b, "valid")
    if train:
        ax.plot([s for s, _, _ in train], [a - b for _, a, b in train], color="C2",
                linewidth=1.0, label="train")
    if valid:
        ax.plot([s for s, _, _ in valid], [a - b for _, a, b in valid], color="C3",
                linestyle="--", marker="o", markersize=4, label="valid")
    if train or valid:
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.legend(loc="best")
    else:
        _note(ax, "no steps in common")
    ax.set_ylabel(f"{log_a.label} - {log_b.label}")
    ax.grid(True, alpha=0.3)


def plot_loss_comparison(log_a: TrainLog, log_b: Optional[TrainLog], out_png,
                         title: Optional[str] = None) -> str:
    """Training (lines) and validation (dashed, markers) loss of one or two runs.

    With two runs a lower panel shows their difference (a - b) on the steps both logged.
    Returns the path written.
    """
    logs = [log_a] if log_b is None else [log_a, log_b]
    fig, axes = _new_figure(len(logs), [3, 1.3][:len(logs)])
    top = axes[0]
    for i, log in enumerate(logs):
        _plot_losses(top, log, f"C{i}")
    top.set_ylabel("loss")
    top.grid(True, alpha=0.3)
    top.legend(loc="best")
    top.set_title(title or "Loss: " + " vs ".join(log.label for log in logs))
    if log_b is not None:
        _plot_difference(axes[1], log_a, log_b)
    axes[-1].set_xlabel("step")
    return _save(fig, out_png)


def plot_lr_schedule(logs: Sequence[TrainLog], out_png, title: Optional[str] = None) -> str:
    """Learning rate over steps of each log that recorded one. Returns the path written."""
    fig, (ax,) = _new_figure(1, [1])
    plotted = False
    for i, log in enumerate(logs):
        points = [(r.step, r.lr) for r in log.train if r.lr is not None]
        if points:
            style = {"linestyle": "--"} if i else {}
            ax.plot([s for s, _ in points], [lr for _, lr in points], color=f"C{i}",
                    linewidth=1.2, label=log.label, **style)
            plotted = True
    if plotted:
        ax.legend(loc="best")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        _note(ax, "no learning rates logged")
    ax.set_title(title or "Learning-rate schedule")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)
    return _save(fig, out_png)


def plot_metric_panels(series: dict, metrics: Sequence[str], out_png,
                       title: Optional[str] = None) -> str:
    """One panel per metric, one line per run: `series` is {label: [(step, {metric: value})]}
    (e.g. a training log's records; a missing metric leaves a gap). Returns the path written."""
    fig, axes = _new_figure(len(metrics), [1] * len(metrics))
    for ax, metric in zip(axes, metrics):
        plotted = False
        for i, (label, records) in enumerate(series.items()):
            points = [(step, values[metric]) for step, values in records if metric in values]
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], color=f"C{i}",
                        linewidth=1.0, label=label, **({"linestyle": "--"} if i else {}))
                plotted = True
        if plotted:
            ax.legend(loc="best")
        else:
            _note(ax, f"no {metric} logged")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    axes[0].set_title(title or ", ".join(metrics))
    axes[-1].set_xlabel("step")
    return _save(fig, out_png)
