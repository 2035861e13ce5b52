"""The loss plot, read back from the matplotlib Figure (not from pixels): labels with units, the
plotted data equal to the inputs, the moving average against numpy's, the learning-rate axis and the
validation markers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from loraflow.train.loss_plot import draw_loss_curve, loss_figure


def _run(n: int):
    losses = [(s, 1.0 / s + 0.05 * math.sin(s)) for s in range(1, n + 1)]
    lrs = [(s, 1e-3 * min(1.0, s / 10)) for s in range(1, n + 1)]  # warm-up then flat
    return losses, lrs


def _line(ax, label):
    [line] = [ln for ln in ax.lines if ln.get_label() == label]
    return line


def test_axes_labels_data_and_smoothing(tmp_path):
    losses, lrs = _run(100)
    figure, path = draw_loss_curve(losses, tmp_path / "loss.png", lrs, [(50, {"validation/aesthetic": 5.25}), (100, {})])
    loss_ax, lr_ax = figure.axes
    assert loss_ax.get_xlabel() == "optimizer step" and "loss" in loss_ax.get_ylabel()
    assert lr_ax.get_ylabel() == "learning rate"
    assert len(loss_ax.get_xticks()) > 2 and len(loss_ax.get_yticks()) > 2 and len(lr_ax.get_yticks()) > 2
    raw = _line(loss_ax, "loss per step")
    assert list(raw.get_xdata()) == [s for s, _ in losses] and list(raw.get_ydata()) == [v for _, v in losses]
    # 100 steps -> a window of 5; trailing mean, shorter at the start (numpy's, computed here)
    smooth = _line(loss_ax, "moving average over 5 steps")
    values = np.array([v for _, v in losses])
    expected = [values[max(0, i - 4):i + 1].mean() for i in range(len(values))]
    assert np.allclose(smooth.get_ydata(), expected)
    assert list(_line(lr_ax, "learning rate").get_ydata()) == [lr for _, lr in lrs]
    markers = [ln for ln in loss_ax.lines if ln.get_linestyle() == ":"]
    assert sorted(ln.get_xdata()[0] for ln in markers) == [50, 100]
    assert [t.get_text() for t in loss_ax.texts] == ["aesthetic 5.25"]
    assert Image.open(path).size == (900, 450)  # 9 x 4.5 inches at 100 dpi


def test_short_run_has_no_one_step_average():
    losses, _ = _run(20)
    figure = loss_figure(losses)
    labels = [ln.get_label() for ln in figure.axes[0].lines]
    assert labels == ["loss per step"] and len(figure.axes) == 1  # no learning rates given: no second axis


@pytest.mark.parametrize("losses", [[], [(1, 0.5)], [(1, float("nan")), (2, 0.3)]])
def test_nothing_to_draw(losses, tmp_path):
    assert draw_loss_curve(losses, tmp_path / "loss.png") == (None, None)
    assert not (tmp_path / "loss.png").exists()


def test_title_names_the_smoothed_end():
    losses, _ = _run(40)  # window 2: the mean of the last two losses
    expected = (losses[-1][1] + losses[-2][1]) / 2
    assert loss_figure(losses).axes[0].get_title() == f"LoRA training: 40 steps, loss {expected:.4g} (average of the last 2 steps)"
    assert loss_figure(losses[:20]).axes[0].get_title() == f"LoRA training: 20 steps, last loss {losses[19][1]:.4g}"
