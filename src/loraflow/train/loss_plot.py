"""The training loss curve people read: raw loss per optimizer step, its moving average, the
learning rate on a second axis, and a marker at every validation (with its scores)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from loraflow.plots import new_figure, save_figure

# The smoothing window is a twentieth of the run, as TensorBoard-style curves look at this scale;
# below 2 steps there is nothing to average, so short runs show the raw loss only.
SMOOTHING_FRACTION = 20


def smoothing_window(n_points: int) -> int:
    return n_points // SMOOTHING_FRACTION


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start, where fewer exist)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_figure(losses: Sequence[tuple[int, float]], learning_rates: Sequence[tuple[int, float]] = (),
                validations: Sequence[tuple[int, dict]] = ()):
    """A matplotlib Figure of the run; None when fewer than 2 finite losses exist (nothing to draw).
    `validations`: (step, {"validation/aesthetic": 5.1, ...}) -- the dict may be empty (samples only)."""
    points = [(s, v) for s, v in losses if math.isfinite(v)]
    if len(points) < 2:
        return None
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    figure = new_figure(9, 4.5)
    ax = figure.add_subplot()
    ax.plot(steps, values, color="#9db4e0", linewidth=1, label="loss per step")
    window = smoothing_window(len(values))
    last = f"last loss {values[-1]:.4g}"
    if window >= 2:
        smooth = moving_average(values, window)
        ax.plot(steps, smooth, color="#143c9c", linewidth=2, label=f"moving average over {window} steps")
        last = f"loss {smooth[-1]:.4g} (average of the last {window} steps)"
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (diffusion MSE)")
    ax.set_xlim(steps[0], steps[-1])
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if learning_rates:
        lr_ax = ax.twinx()
        lr_ax.plot([s for s, _ in learning_rates], [lr for _, lr in learning_rates], color="#d07a1e",
                   linewidth=1.2, linestyle="--", label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        # headroom above the largest rate, so a constant schedule is not drawn under the legend
        lr_ax.set_ylim(0, 1.4 * max(lr for _, lr in learning_rates) or 1.0)
        more = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    for k, (step, scores) in enumerate(validations):
        line = ax.axvline(step, color="#2e8b57", linestyle=":", linewidth=1.2,
                          label="validation" if k == 0 else None)
        if k == 0:
            handles, labels = handles + [line], labels + ["validation"]
        if scores:
            text = "\n".join(f"{key.split('/')[-1]} {value:.3g}" for key, value in scores.items())
            ax.annotate(text, (step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", va="top", fontsize="x-small", color="#2e8b57")
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    ax.set_title(f"LoRA training: {steps[-1]} steps, {last}")
    return figure


def draw_loss_curve(losses: Sequence[tuple[int, float]], path: str | Path,
                    learning_rates: Sequence[tuple[int, float]] = (), validations: Sequence[tuple[int, dict]] = ()):
    """Save the loss figure as a PNG; returns (figure, path), or (None, None) when there is nothing to draw."""
    figure = loss_figure(losses, learning_rates, validations)
    if figure is None:
        return None, None
    return figure, save_figure(figure, path)
