"""Start a trial's process group the standard way: torchrun's elastic launcher, as a library call.

``launch(entry, args, nproc)`` runs ``entry(*args)`` in ``nproc`` new processes joined in one ``torch.distributed``
group (gloo on the CPU, NCCL on CUDA, one GPU per rank through ``LOCAL_RANK``), exactly as ``torchrun --standalone
--nproc-per-node nproc`` would, and returns what rank 0 returned. The calling process is the elastic agent: it
watches the ranks, and when one dies (an error, a SIGKILL) it stops the others (SIGTERM, then SIGKILL after
``shutdown_timeout``) and raises :class:`RankFailedError`, so no rank is left waiting in a collective and no process
outlives the call. Nothing is restarted here (``max_restarts=0``): a failed trial is retried by the sweep, which
resumes it from its sharded checkpoint.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure, record
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1

# How long the agent lets the other ranks end after one failed (they may be waiting in a collective that will never
# complete): then they are killed.
_SHUTDOWN_TIMEOUT_S = 30
# A collective that waits longer than this has lost a rank: it raises instead of hanging (the agent usually ends
# the group first).
_COLLECTIVE_TIMEOUT = timedelta(minutes=10)


class RankFailedError(RuntimeError):
    """A rank of a trial's process group failed; the others were stopped.

    ``error_type`` names the failing rank's exception (``torch.OutOfMemoryError`` …) when it raised one, else it is
    empty (killed by a signal: ``exitcode`` is minus the signal number).
    """

    def __init__(self, rank: int, exitcode: int, error_type: str, message: str) -> None:
        what = f"{error_type}: {message}" if error_type else f"exit code {exitcode}"
        super().__init__(f"rank {rank} of the trial's process group failed ({what}); the other ranks were stopped")
        self.rank = rank
        self.exitcode = exitcode
        self.error_type = error_type
        self.message = message

    @property
    def stopped_from_outside(self) -> bool:
        """Whether a rank was SIGKILLed (or it lost a peer, which was) rather than failing by an error of its
        own: the trial is retried, like a trial process that was killed."""
        return self.exitcode == -signal.SIGKILL or self.lost_peer

    @property
    def lost_peer(self) -> bool:
        """Whether this rank only lost a peer (the agent may see that before the peer's own death)."""
        return any(marker in self.message for marker in _LOST_PEER)


def _die_with_parent() -> None:
    """SIGKILL this rank when the process that launched it dies, however it dies (Linux): the trial process may be
    SIGKILLed itself (its worker died), and a rank left behind would keep training and hold its GPU."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


@record
def _rank_main(entry: Callable[..., T], backend: str, *args: Any) -> T:
    """One rank: join the group (on its own GPU under NCCL), run ``entry``, leave the group."""
    _die_with_parent()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=_COLLECTIVE_TIMEOUT)
    # Not in a ``finally``: a rank that raises exits with its error recorded (by ``@record``) while its sockets are
    # still open, so the agent sees the cause (an out-of-memory error, say) before its peers' "connection closed".
    result = entry(*args)
    dist.destroy_process_group()
    return result


# What a rank says when a peer of its collective is gone: a consequence of another rank's failure, not the cause.
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "remote worker", "NCCL communicator was aborted")


def _is_lost_peer(failure: ProcessFailure) -> bool:
    return failure.exitcode > 0 and any(marker in str(failure.message) for marker in _LOST_PEER)


def _first_failure(error: ChildFailedError) -> RankFailedError:
    """The failure that ended the group: the first by time, passing over ranks that only lost a peer."""
    by_time = sorted(error.failures.items(), key=lambda item: item[1].timestamp)
    causes = [item for item in by_time if not _is_lost_peer(item[1])]
    rank, failure = (causes or by_time)[0]
    message = failure.message
    if isinstance(message, dict):  # the error file's content: {"message": "...", "extraInfo": {...}}
        message = message.get("message", "")
    text = str(message or "")
    error_type, _, detail = text.partition(": ")
    if not error_type or " " in error_type or failure.exitcode < 0:
        error_type, detail = "", text
    return RankFailedError(rank, failure.exitcode, error_type, detail.splitlines()[0] if detail else "")


def launch(
    entry: Callable[..., T],
    args: tuple[Any, ...],
    nproc: int,
    backend: str = "gloo",
    signals: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"),
) -> T:
    """Run ``entry(*args)`` on ``nproc`` ranks of a new local process group; rank 0's return value.

    ``entry`` and ``args`` are pickled to the ranks. They are forked from multiprocessing's fork server, started
    once per calling process with ``entry``'s module imported (torch, transformers): a rank starts in about a second,
    and from a process with no other threads. Forking this process instead is not safe: the launcher's rendezvous
    store runs a thread here, and a rank forked while it held a lock was seen aborting
    (``std::system_error``) one launch in a few.

    ``signals``: those the launcher handles while it runs (torchrun's default set): it stops every rank and raises
    ``SignalException``. Leave one out to handle it yourself (the ranks get it too only if it is sent to them).

    Raises:
        RankFailedError: a rank raised or was killed; every rank has ended.
    """
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"ftlab-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,
        monitor_interval=0.1,
        start_method="forkserver",
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        signals_to_handle=",".join(signals),
    )
    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__, entry.__module__])
    try:
        results = elastic_launch(config, _rank_main)(entry, backend, *args)
    except ChildFailedError as error:
        raise _first_failure(error) from None
    return results[0]
