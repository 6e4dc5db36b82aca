"""Progress of the long loops (decoding, encoding, training, embedding), with or without a terminal.

On a terminal it is a tqdm bar. Without one (`dvc repro`, Snakemake's log files, a SLURM job) the
bar is off, so a line is logged every LOG_EVERY_S seconds (and at the end of a loop that logged
before): done / total, rate, time left, and the loop's own figures (e.g. the loss).
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

log = logging.getLogger(__name__)
LOG_EVERY_S = 30.0


class Progress:
    def __init__(self, total: int, desc: str, unit: str, initial: int = 0):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=None)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.first = initial
        self.start = self.last = time.monotonic()
        self.postfix: dict[str, str] = {}
        self.logged = False

    @property
    def rate(self) -> float:
        """Units per second since the start."""
        return (self.n - self.first) / max(time.monotonic() - self.start, 1e-9)

    def update(self, n: int = 1, **postfix: str) -> None:
        self.n += n
        self.postfix.update(postfix)
        if not self.bar.disable:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
        elif time.monotonic() - self.last >= LOG_EVERY_S or (self.logged and self.n >= self.total):
            self._log()

    def _log(self) -> None:
        self.last, self.logged = time.monotonic(), True
        left = (self.total - self.n) / self.rate if self.rate > 0 else float("nan")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        log.info(
            "%s: %d/%d %s (%.0f%%), %.2f %s/s, %.0f s left%s",
            self.desc,
            self.n,
            self.total,
            self.unit,
            100 * self.n / max(self.total, 1),
            self.rate,
            self.unit,
            left,
            extra,
        )

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
