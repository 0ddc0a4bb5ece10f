"""Progress of a search where stderr is not a terminal (CI, ``nohup``, systemd): plain lines at
a fixed interval instead of a redrawn bar, which a log would keep as one ever-growing line.

:class:`PlainProgress` offers the part of tqdm's interface the loop uses (``update``,
``set_postfix``, ``close``). A line::

    hwnas search: 12/40 candidates (30%), done=10, failed=2, front=4, queue=3, 35 s
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class PlainProgress:
    """Counts closed candidates and prints one line every ``every_s`` seconds and at the end."""

    def __init__(self, *, total: int, initial: int = 0, every_s: float = 30.0,
                 stream: TextIO | None = None) -> None:
        self.total = total
        self.n = initial
        self.every_s = every_s
        self.stream = stream if stream is not None else sys.stderr
        self._postfix: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._last = self._t0

    def update(self, n: int = 1) -> None:
        """``n`` more candidates closed."""
        self.n += n
        self._maybe_print()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """The figures shown after the count (done, failed, front, queue)."""
        self._postfix = dict(values)
        self._maybe_print()

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k}={v}" for k, v in self._postfix.items())
        print(f"hwnas search: {self.n}/{self.total} candidates{pct}{extra}, {now - self._t0:.0f} s",
              file=self.stream, flush=True)

    def close(self) -> None:
        """The final line."""
        self._print(time.monotonic())
