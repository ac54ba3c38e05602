"""Progress for long work: a live bar with rate and ETA on a terminal, plain lines elsewhere.

On a terminal the bar redraws in place at most ten times a second; when output goes to a file or
CI it prints a plain line every ``every`` seconds and one at the end, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(
        self,
        total: int | None,
        desc: str = "",
        unit: str = "step",
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        every: float = 10.0,
        initial: int = 0,
        scale: float = 1.0,
        unit_label: str | None = None,
    ):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.n = initial
        self.start_n = initial
        self.scale = scale
        self.unit_label = unit_label or unit
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False
        self.postfix = ""

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        done = self.n * self.scale
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(1.0, self.n / self.total)
            total = self.total * self.scale
            if self.tty:
                width = 24
                filled = int(frac * width)
                parts.append("[" + "#" * filled + "." * (width - filled) + "]")
            parts.append(f"{100 * frac:5.1f}% {done:,.0f}/{total:,.0f} {self.unit_label}")
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            if rate > 0:
                parts.append(f"ETA {_duration(eta)}")
        else:
            parts.append(f"{done:,.0f} {self.unit_label}")
        parts.append(f"{rate * self.scale:,.1f} {self.unit_label}/s")
        if self.postfix:
            parts.append(self.postfix)
        return "  ".join(parts)

    def update(self, n: int = 1, *, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw >= 0.1 or (self.total and self.n >= self.total):
                self._last_draw = now
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
                self._drawn = True
        elif now - self._last_draw >= self.every:
            self._last_draw = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def write(self, text: str) -> None:
        """Print a line above the bar without breaking it."""
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
        print(text, file=sys.stdout if self.stream is sys.stderr else self.stream, flush=True)
        if self.tty and self._drawn:
            self.stream.write(self.line())
            self.stream.flush()

    def close(self) -> None:
        """Leave the final state on screen (a last plain line when not on a terminal)."""
        if not self.enabled:
            return
        if self.tty and self._drawn:
            self.stream.write("\r\033[K" + self.line() + "\n")
        elif not self.tty and self.n > self.start_n:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def download_progress(
    stream: TextIO | None = None,
) -> Callable[[str, int, int | None], None]:
    """A progress callback for downloads (``io.progress.Progress``, one bar per file): a live bar
    on a terminal, one ``downloading FILE (SIZE)`` line per file elsewhere."""
    out = stream if stream is not None else sys.stderr
    tty = hasattr(out, "isatty") and out.isatty()
    bars: dict[str, Progress] = {}

    def progress(filename: str, done: int, total: int | None) -> None:
        bar = bars.get(filename)
        if bar is None:
            if not tty:
                size = f" ({total / 1e6:.1f} MB)" if total else ""
                print(f"downloading {filename}{size}", file=out, flush=True)
            bar = bars[filename] = Progress(
                total,
                desc=filename,
                unit="byte",
                stream=out,
                enabled=tty,
                scale=1e-6,
                unit_label="MB",
            )
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    return progress
