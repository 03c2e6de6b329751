"""A worker process's scheduling priority: Ray starts worker processes at nice 15 on clusters
started with ``ray start`` (``RAY_worker_niceness``), where a replica beside any busy process
would get a sliver of the CPU. Actors raise their own priority when they start."""

from __future__ import annotations

import os
from pathlib import Path


def raise_priority(niceness: int = 0) -> str | None:
    """Set every thread of this process to ``niceness`` when it runs at a higher (lower-priority)
    value. Returns None when done or nothing was to do, else a one-line warning (lowering a nice
    value needs CAP_SYS_NICE or a matching RLIMIT_NICE; without, the process stays as it was)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current <= niceness:
        return None
    threads = [int(task.name) for task in Path("/proc/self/task").iterdir()] if Path("/proc/self/task").is_dir() else [0]
    for thread in threads:  # on Linux a nice value belongs to a thread, not to the whole process
        try:
            os.setpriority(os.PRIO_PROCESS, thread, niceness)
        except PermissionError:
            return (f"worker process {os.getpid()} runs at nice {current} and may not lower it to {niceness}: "
                    f"start Ray with RAY_worker_niceness={niceness} in its environment, or give it CAP_SYS_NICE")
        except ProcessLookupError:
            continue  # a thread that ended meanwhile
    return None


def niceness() -> int:
    """This thread's nice value."""
    return os.getpriority(os.PRIO_PROCESS, 0)
