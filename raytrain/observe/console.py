"""What a person watching the console sees: each line once, a progress bar or plain periodic lines, and
Ray Data's own progress bars off unless asked for (`run.console`, `run.ray_progress_bars`)."""

from __future__ import annotations

import sys
import time

from ray.data import DataContext
from tqdm import tqdm

from raytrain.config.sections import RunConfig


def say(text: str) -> None:
    """One console line. Ray Train patches `print` in its workers to also log each line, which its console
    handler prints a second time; a write to stdout goes out once, from any process."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def use_bar(run: RunConfig) -> bool:
    """`run.console`: a bar, or plain lines; `auto` asks whether the driver's stdout is a terminal."""
    return run.console == "bar" or (run.console == "auto" and sys.stdout.isatty())


def quiet_ray_data(run: RunConfig) -> None:
    """Ray Data's streaming progress bars redraw (cursor-up escapes) between other lines; off unless
    `run.ray_progress_bars`. A dataset keeps the `DataContext` it was made under, so call this first."""
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = run.ray_progress_bars


def eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A count toward `total`: a tqdm bar (`bar`; `remote`: drawn by the Ray driver from a worker, through
    `ray.experimental.tqdm_ray`), else a plain line at most every `every_s` seconds and at the end.

    `update(n, text)` adds `n` done and shows `text` (the latest figures) beside the count."""

    def __init__(self, total: int | None, desc: str, *, bar: bool, remote: bool = False, every_s: float = 30.0,
                 unit: str = "it", start: int = 0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done, self.start = start, start
        self.t0 = self.last_line = time.perf_counter()
        self._bar = None
        if bar and remote:
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            self._bar = ray_tqdm(total=total, desc=desc, unit=unit)
            self._bar.update(start)
        elif bar:
            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=start)

    def rate(self) -> float:
        """Seconds per unit so far."""
        return (time.perf_counter() - self.t0) / max(self.done - self.start, 1)

    def line(self, text: str = "") -> str:
        """`desc done/total | text | s/unit ETA` (the ETA only with a total)."""
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        timing = f"{self.rate():.1f}s/{self.unit}"
        if self.total:
            timing += f" ETA {eta(self.rate() * max(self.total - self.done, 0))}"
        return " | ".join(p for p in (f"{self.desc} {count}", text, timing) if p)

    def update(self, n: int = 1, text: str = "", *, always: bool = False) -> None:
        """Count `n` more. Plain lines: one when `always`, at the end, or `every_s` after the last."""
        self.done += n
        if self._bar is not None:
            if text:
                self._bar.set_description(f"{self.desc} | {text}")
            self._bar.update(n)
            return
        now = time.perf_counter()
        if always or now - self.last_line >= self.every_s or (self.total and self.done >= self.total):
            self.last_line = now
            say(self.line(text))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
