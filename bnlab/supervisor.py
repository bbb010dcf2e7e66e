"""`bnlab up`'s worker supervision: a worker process that exits while `up` runs is started again,
after a backoff; one that keeps exiting is left down, and /health says so.

The API learns that `up` gave up through a file in the state dir (`worker-stopped`, holding the
reason), which /health reads when it exists: the API and the supervisor share the state dir
anyway, and a file needs no database write from a process whose worker may have died of the
database. `up` removes it when it starts and when it stops, so it never outlives its `up`.
"""

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from bnlab.vocabulary import Queue

log = logging.getLogger(__name__)

# This many exits within WINDOW_SECONDS and `up` stops restarting the worker.
MAX_EXITS = 5
WINDOW_SECONDS = 120.0
# The wait before a restart doubles with each exit in the window: 1, 2, 4, 8 s. MAX_EXITS
# bounds it, so it needs no cap of its own.
FIRST_BACKOFF_SECONDS = 1.0
# How long a SIGTERMed worker has to hand its job back before its process group is killed.
GRACE_SECONDS = 30.0


def status_file(state_dir: Path) -> Path:
    return state_dir / "worker-stopped"


def given_up(state_dir: Path) -> str | None:
    """Why `up` stopped restarting its worker, or None while it has not (or no `up` runs)."""
    with contextlib.suppress(FileNotFoundError):
        return status_file(state_dir).read_text().strip()
    return None


def _give_up(state_dir: Path, reason: str) -> None:
    # Written whole, then renamed: /health never reads half a reason.
    state_dir.mkdir(parents=True, exist_ok=True)
    partial = status_file(state_dir).with_suffix(".partial")
    partial.write_text(reason + "\n")
    partial.replace(status_file(state_dir))


def how_it_ended(returncode: int) -> str:
    """`exited with status 3`, or `killed by SIGKILL` (Popen's negative return code)."""
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class Supervisor:
    """Runs `command` (a worker for `queue`) in a process group of its own and starts it again
    whenever it exits, until `stop()` or until it has exited MAX_EXITS times in WINDOW_SECONDS.
    """

    def __init__(self, command: Sequence[str], queue: Queue, state_dir: Path) -> None:
        self.command = list(command)
        self.queue = queue
        self.state_dir = state_dir
        self._stopping = threading.Event()
        # Held while the process is replaced, so that stop() never misses a new one.
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True, name="bnlab-supervisor")

    def start(self) -> None:
        status_file(self.state_dir).unlink(missing_ok=True)
        self._process = self._spawn()
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker warmly (no restart from now on) and wait for its whole group."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            _stop(process)
        if self._thread.is_alive():
            self._thread.join()
        status_file(self.state_dir).unlink(missing_ok=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        # A process group of its own: the worker and its pool processes stop together, and only
        # when `up` says so (a Ctrl-C reaches `up` alone, which then stops the worker warmly).
        return subprocess.Popen(self.command, env=os.environ.copy(), start_new_session=True)

    def _watch(self) -> None:
        exits: deque[float] = deque()
        while True:
            process = self._process
            assert process is not None  # start() spawned it before starting this thread
            returncode = process.wait()
            if self._stopping.is_set():
                return
            # What is left of the dead worker's group (a pool process mid-job) goes now, not
            # whenever it notices: the job's lease lapses and the next worker's reaper hands
            # the job out again.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            now = time.monotonic()
            exits.append(now)
            while now - exits[0] > WINDOW_SECONDS:
                exits.popleft()
            ended = how_it_ended(returncode)
            if len(exits) >= MAX_EXITS:
                reason = (
                    f"the {self.queue} worker exited {len(exits)} times in "
                    f"{WINDOW_SECONDS / 60:g} minutes (last: {ended}); bnlab up stopped "
                    "restarting it — see the log"
                )
                log.error("%s", reason)
                _give_up(self.state_dir, reason)
                return
            backoff = FIRST_BACKOFF_SECONDS * 2 ** (len(exits) - 1)
            log.warning(
                "the %s worker (pid %d) %s; starting it again in %g s",
                self.queue,
                process.pid,
                ended,
                backoff,
            )
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._process = self._spawn()
            log.info("started the %s worker again (pid %d)", self.queue, self._process.pid)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the worker's running job saves its state and hands its experiment back at its
    next sample point, then the worker exits. Past the grace period, kill its whole group; the
    experiment is then queued again by the next worker's reaper."""
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=GRACE_SECONDS)
    # Whatever is left of the group (a pool process that outlived its parent).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
