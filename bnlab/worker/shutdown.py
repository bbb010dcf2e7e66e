"""A worker's warm shutdown (SIGTERM), told to the jobs running in its pool processes.

Celery hears the signal in the main process; a prefork job runs in a child process that was
forked from it. One byte of anonymous shared memory, mapped at import (before the pool forks),
is seen by both: the main process sets it, a job reads it at every sample point, saves its state
and hands the experiment back instead of making the shutdown wait for the end of the training.
"""

import mmap

_flag = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: shared with every process forked later


def request() -> None:
    _flag[0] = 1


def requested() -> bool:
    return _flag[0] == 1
