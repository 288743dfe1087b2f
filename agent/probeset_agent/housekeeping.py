"""Housekeeping of the running ProbeSets: every few seconds, and at once when a pod changes."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("probeset")


class Housekeeper:
    """Every `interval` seconds, and at once when woken (a pod changed): rescan the cgroup tree,
    forget pods past their retention, and let each program follow pods and age out series."""

    def __init__(self, programs: list, attribution, pods=None, interval: float = 2.0, after=None):
        self.programs, self.attribution, self.pods, self.interval = programs, attribution, pods, interval
        self.after = after    # called after each round (the cluster agent reports status changes)
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            try:
                self.attribution.rescan(force=True)
                if self.pods is not None:
                    self.pods.expire()
                for prog in list(self.programs):
                    prog.refresh()
                if self.after is not None:
                    self.after()
            except Exception:   # keep the probes running; the next round tries again
                log.exception("housekeeping failed")

    def start(self) -> "Housekeeper":
        threading.Thread(target=self.run, name="probeset-housekeeping", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
