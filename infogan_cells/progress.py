"""Progress of the long stages: a tqdm bar on a terminal, plain log lines in a log file.

A bar redraws itself with carriage returns, which a log file keeps as one endless line. So
:func:`progress` gives a tqdm bar only when stderr is a terminal (or in Jupyter, where tqdm
draws a widget), and otherwise a counter that
logs one ordinary line every ``interval`` seconds (and one at the end) through
``logging`` (``infogan_cells.progress``). The workflow's jobs ask for lines (:func:`use_bars`):
several jobs share one terminal there, and each has its own log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
INTERVAL_S = 30.0
_bars: bool | None = None  # None: bars when stderr is a terminal


def use_bars(enabled: bool | None) -> None:
    """Force bars on or off (``None``: bars exactly when stderr is a terminal)."""
    global _bars
    _bars = enabled


def progress(
    total: int | None,
    desc: str,
    *,
    unit: str = "it",
    initial: int = 0,
    enable: bool = True,
    interval: float = INTERVAL_S,
) -> Any:
    """A progress counter with tqdm's ``update(n)``, ``set_postfix(mapping)`` and ``close()``
    (also a context manager): a tqdm bar on a terminal, else :class:`LogProgress`; a counter
    that shows nothing when ``enable`` is false."""
    bars = (sys.stderr.isatty() or _in_notebook()) if _bars is None else _bars
    if enable and bars:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True)
    return LogProgress(
        total, desc, unit=unit, initial=initial, interval=interval if enable else float("inf"), final=enable
    )


def track(
    iterable: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it", enable: bool = True
) -> Iterator[T]:
    """Yield from ``iterable``, counting one unit per item (see :func:`progress`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress(total, desc, unit=unit, enable=enable) as bar:
        for item in iterable:
            yield item
            bar.update(1)


class LogProgress:
    """Counts units and logs ``desc: done/total unit (pct%), elapsed, rate[, postfix]`` at most
    every ``interval`` seconds, and once at ``close()`` when ``final``."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        initial: int = 0,
        interval: float = INTERVAL_S,
        final: bool = True,
        clock=time.monotonic,
    ):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self.final, self._clock = interval, final, clock
        self._start = self._last = clock()
        self._initial = initial
        self._postfix = ""
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            log.info("%s", self.line(now))

    def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kwargs}.items())

    def line(self, now: float | None = None) -> str:
        elapsed = (self._clock() if now is None else now) - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {done} {self.unit}{pct}, {_duration(elapsed)}, {rate:.3g} {self.unit}/s"
        return f"{text}, {self._postfix}" if self._postfix else text

    def close(self) -> None:
        if not self._closed and self.final:
            log.info("%s", self.line())
        self._closed = True

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _in_notebook() -> bool:
    """A Jupyter kernel: tqdm.auto draws a widget there, no carriage returns."""
    return "ipykernel" in sys.modules


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
