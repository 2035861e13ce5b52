"""Progress bars for long work: `tqdm.auto` draws a widget in Jupyter and a text bar in a terminal."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressFn = Callable[[int, int], None]  # (done, total)


@contextmanager
def step_bar(desc: str, unit: str = "step") -> Iterator[ProgressFn]:
    """A bar fed by `update(done, total)` callbacks (the total is known only once work starts)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=None, desc=desc, unit=unit)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


@contextmanager
def progress_for(progress: bool | ProgressFn | None, desc: str, unit: str = "step") -> Iterator[ProgressFn | None]:
    """The Python API's `progress=` argument: True draws a bar, a callable is called, False/None is silent."""
    if callable(progress):
        yield progress
    elif progress:
        with step_bar(desc, unit) as update:
            yield update
    else:
        yield None
