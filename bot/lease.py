"""A training run's lease, renewed in the background while its process works on it.

A replica that sees the lease expired fails the run (the process died, on whichever host) and may start the
next one; so a process that learns its run was failed meanwhile must stop and record nothing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from storage.repository import RunClosed, Store

log = logging.getLogger(__name__)


class RunLease:
    """Renews the run's lease every quarter of its length until `stop()`; a database that does not answer
    for a moment only costs renewals, as long as one gets through before the lease runs out."""

    def __init__(self, store: Store, run_id: int, seconds: float) -> None:
        self.store, self.run_id, self.seconds = store, run_id, seconds
        self.lost = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-run-{run_id}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while True:
            try:
                if not self.store.renew_lease(self.run_id, self.seconds):
                    self.lost = True
                    log.error("training run %d was failed by another replica: stopping it", self.run_id)
                    return
            except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the next renewal retries
                log.warning("training run %d: could not renew its lease: %s", self.run_id, exc)
            if self._stopped.wait(self.seconds / 4):
                return

    def check(self) -> None:
        """Raise RunClosed once the run was failed by another replica."""
        if self.lost:
            raise RunClosed(f"training run {self.run_id} was failed by another replica (its lease expired)")

    def checking(self, progress: Callable[[str], None]) -> Callable[[str], None]:
        """`progress`, stopping the run at its next report (each epoch's) once the lease is lost."""

        def report(text: str) -> None:
            self.check()
            progress(text)

        return report

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
