"""A job's lease, kept alive from a thread between sample points.

The job renews its lease with every write it makes, but a sample interval can be long (a big
net, 500 steps): without this thread a healthy job would look dead to the reaper. The thread
also hears of a cancel, and notices first when the lease was taken away.
"""

import logging
import threading
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bnlab.store import leases
from bnlab.store.leases import Lease, LeaseLost

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, sessions: sessionmaker[Session], lease: Lease, interval: float) -> None:
        self.sessions = sessions
        self.lease = lease
        self.interval = interval
        self.lost = threading.Event()
        self.cancel_requested = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="bnlab-lease")

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def renewed(self, cancel_requested: bool) -> None:
        """The job renewed the lease itself, as part of a write."""
        self.cancel_requested = self.cancel_requested or cancel_requested

    def _beat(self) -> None:
        # Until the job ends, or until the lease is found lost (by this thread or by the job).
        while not self._stop.wait(self.interval) and not self.lost.is_set():
            try:
                with self.sessions() as session:
                    cancel_requested = leases.hold(session, self.lease)
                    session.commit()
                self.renewed(cancel_requested)
            except LeaseLost as lost:
                # The job's last write may have finished the experiment between two beats:
                # that is the end of the lease, not a loss.
                if not self._ended_by_holder():
                    log.warning("%s; this worker writes nothing more for it", lost)
                    self.lost.set()
                return
            except SQLAlchemyError as error:  # the database may be restarting: beat again later
                log.warning("lease heartbeat failed: %s", type(error).__name__)

    def _ended_by_holder(self) -> bool:
        try:
            with self.sessions() as session:
                return leases.ended_by_holder(session, self.lease)
        except SQLAlchemyError:  # cannot tell: a loss, the safe side (this job writes no more)
            return False
