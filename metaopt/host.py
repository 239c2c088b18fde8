"""Host-side helpers of long loops: signals turned into a flag, and progress lines."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TextIO


class SignalFlag:
  """Turns SIGINT / SIGTERM into a flag checked between steps (main thread only).

  Example:
    >>> with SignalFlag(True) as interrupted:
    ...   while interrupted.signum is None: step()
  """

  def __init__(self, enabled: bool):
    self.enabled = enabled and threading.current_thread() is threading.main_thread()
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self) -> SignalFlag:
    if self.enabled:
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class ProgressLine:
  """Progress of a loop: redrawn in place on a terminal, else a plain line now and then.

  On a terminal the line is redrawn at most every ``redraw_seconds``; in a log file
  (``nohup make mnist > log``) a line is written only when :meth:`update` is called
  with ``force=True`` (e.g. at each validation) or ``log_seconds`` have passed.

  Example:
    >>> bar = ProgressLine("meta-train", total=2000)
    >>> bar.update(10, meta_loss=0.5)
    >>> bar.close()
  """

  def __init__(self, desc: str, total: int, enabled: bool = True, stream: TextIO | None = None,
               log_seconds: float = 30.0, redraw_seconds: float = 0.5):
    self.desc, self.total, self.enabled = desc, total, enabled
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.interval = redraw_seconds if self.tty else log_seconds
    self.start = time.perf_counter()
    self.last = -float("inf")
    self.drawn = False

  def update(self, done: int, force: bool = False, **fields) -> None:
    """Show ``done`` of ``total`` and ``fields`` if due (or ``force``)."""
    now = time.perf_counter()
    if not self.enabled or not (force or now - self.last >= self.interval or done == self.total):
      return
    self.last = now
    elapsed = now - self.start
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in fields.items())
    line = f"{self.desc} {done}/{self.total} [{elapsed:.0f} s] {text}"
    if self.tty:
      self.stream.write("\r\x1b[K" + line)
      self.drawn = True
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self) -> None:
    """End the redrawn line (terminal only)."""
    if self.enabled and self.tty and self.drawn:
      self.stream.write("\n")
      self.stream.flush()
