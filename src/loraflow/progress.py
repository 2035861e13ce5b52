"""Progress bars for long work: `tqdm.auto` draws a widget in Jupyter and a text bar in a terminal."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressFn = Callable[[int, int], None]  # (done, total)


class StepBar:
    """A bar fed by `update(done, total)` callbacks, opened at the first step, so notices printed
    while the model loads or prompts are encoded (unknown words, the demo model) come before it
    instead of through it."""

    def __init__(self, desc: str, unit: str = "step"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit)
        self.bar.total = total  # a storyboard with best-of or references may learn its total late
        self.bar.update(done - self.bar.n)  # tqdm's own rate and ETA

    def __enter__(self) -> "StepBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress_for(progress: bool | ProgressFn | None, desc: str, unit: str = "step") -> Iterator[ProgressFn | None]:
    """The Python API's `progress=` argument: True draws a bar, a callable is called, False/None is silent."""
    if callable(progress):
        yield progress
    elif progress:
        with StepBar(desc, unit) as update:
            yield update
    else:
        yield None
