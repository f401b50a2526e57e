"""Progress on stderr: a rewritten line on a terminal, sparse plain lines otherwise (CI logs)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool = True, stream=None, min_interval_s: float = 0.5):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval_s = min_interval_s if self.tty else 10.0
        self._last = 0.0
        self._open_line = False

    def step(self, label: str, done: int, total: int, unit: str = "B") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < self.min_interval_s:
            return
        self._last = now
        text = f"{label}: {_human(done, unit)} / {_human(total, unit)} ({done / total:.0%})" if total else label
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self._open_line = done < total
            if not self._open_line:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n} {unit}"
    for suffix in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or suffix == "TB":
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1000
    return str(n)
