"""A search's progress: what a person watching it sees, and what a caller can wait on.

:class:`SearchProgress` counts the candidates closed in this process (``wait_closed``), keeps
each training's last epoch record, and draws the progress line: a tqdm bar on a terminal, or,
where stderr is not a terminal (CI, ``nohup``, systemd), plain lines at a fixed interval instead
of a redrawn bar, which a log would keep as one ever-growing line.

:class:`PlainProgress` offers the part of tqdm's interface the loop uses (``update``,
``set_postfix``, ``close``). A line::

    hwnas search: 12/40 candidates (30%), done=10, failed=2, front=4, queue=3, 35 s
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, TextIO


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


class SearchProgress:
    """The loop's progress: closed candidates (``closed_count``, :meth:`wait_closed`), each
    training's last epoch record (``training``), and the bar. ``figures()`` gives the bar's
    postfix (done, failed, front, queue); it is called at most every 0.5 s, since the front is
    computed over every finished candidate."""

    def __init__(self, *, show: bool, every_s: float, figures: Callable[[], dict[str, Any]]) -> None:
        self.show, self.every_s, self.figures = show, every_s, figures
        #: candidates finished or failed in this process
        self.closed_count = 0
        #: candidate id -> its last epoch record, while it trains
        self.training: dict[int, dict[str, float]] = {}
        self._closed = threading.Condition()
        self._bar: Any = None
        self._last_refresh = 0.0

    def open(self, *, total: int, initial: int) -> None:
        """Draw the bar (nothing when ``show`` is off)."""
        if not self.show:
            return
        if not sys.stderr.isatty():  # a log (CI, nohup, systemd): plain lines, not a redrawn bar
            self._bar = PlainProgress(total=total, initial=max(0, initial), every_s=self.every_s)
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=max(0, initial), desc="hwnas search", unit="cand", dynamic_ncols=True)

    def close(self) -> None:
        """The bar's last line."""
        if self._bar is not None:
            self._bar.close()

    def wait_closed(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` candidates have finished or failed in this process; False on timeout."""
        with self._closed:
            return self._closed.wait_for(lambda: self.closed_count >= n, timeout)

    def candidate_closed(self, *_: Any) -> None:
        """One more candidate finished or failed."""
        with self._closed:
            self.closed_count += 1
            self._closed.notify_all()
        if self._bar is not None:
            self._bar.update(1)
            self.refresh()

    def epoch(self, cid: int, record: dict[str, float]) -> None:
        """A training's epoch record (shown until :meth:`trained`)."""
        self.training[cid] = record
        self.refresh()

    def trained(self, cid: int) -> None:
        """The candidate's training is over: its epochs leave the line."""
        self.training.pop(cid, None)

    def refresh(self) -> None:
        """Redraw the postfix, at most every 0.5 s."""
        if self._bar is None or time.monotonic() - self._last_refresh < 0.5:
            return
        self._last_refresh = time.monotonic()
        training = " ".join(f"#{cid}:{int(r['epoch'])}/{int(r['epochs'])}@{r['images_per_s']:.0f}img/s"
                            for cid, r in sorted(self.training.items()))
        self._bar.set_postfix(**self.figures(), training=training or "-", refresh=True)
