"""Training and evaluation on several processes: torch.distributed (DistributedDataParallel) and its launcher.

``cnnviz train --nproc N`` starts N worker processes on this machine through torch.distributed's
elastic launcher (the engine behind ``torchrun``), each running the same command; an external
``torchrun ... -m cnnviz_cli train`` starts the same workers on one machine or several. A worker
knows it is one from the variables every launcher sets (RANK, WORLD_SIZE, LOCAL_RANK, ...).

The rules the training and evaluation code follow:

- rank 0 alone reads and writes the store and prints; the other ranks compute;
- a decision that changes what happens next (stop at this batch, an error rank 0 found) is shared
  with every rank, so that no rank waits in a collective the others never enter;
- work every rank does on its own (reading the data, building the model) ends in ``Comm.agree``: an
  error that only some rank met (its machine lacks a file) reaches every rank, and rank 0 reports it
  instead of finding its peer gone;
- images are sharded into contiguous slices (``torch.tensor_split``): no padding, no image twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cnnviz_cli.errors import EXIT_BUG, EXIT_INTERRUPTED, CnnvizError, Interrupted, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
LONG_WAIT_HOURS = 24  # how long ranks wait for a machine's first rank to decode an image folder
OWN_LAUNCHER_ENV = "CNNVIZ_LAUNCHED"  # set for the workers of `--nproc`: their launcher reports for them


@dataclass(frozen=True)
class World:
    """Where this process stands in its job: global and local rank, how many processes and machines."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    nodes: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a worker started by torchrun or by ``--nproc``."""
    return all(name in os.environ for name in LAUNCHER_VARS)


def world() -> World:
    """This process's place in its job, from the launcher's variables (a lone process is rank 0 of 1)."""
    if not launched():
        return World()
    env = os.environ
    try:
        size = int(env["WORLD_SIZE"])
        local_size = int(env.get("LOCAL_WORLD_SIZE", "1"))
        return World(
            rank=int(env["RANK"]),
            size=size,
            local_rank=int(env["LOCAL_RANK"]),
            local_size=local_size,
            nodes=int(env.get("GROUP_WORLD_SIZE") or max(1, size // max(1, local_size))),
        )
    except ValueError as exc:
        raise UsageError(f"The launcher's variables RANK/WORLD_SIZE/LOCAL_RANK are not whole numbers ({exc}).") from None


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}.", "Use --nproc 1 for one process.")


def check_batch_divides(batch_size: int, processes: int) -> None:
    """The global batch is split evenly: every process takes ``batch_size / processes`` images per step."""
    if batch_size % processes:
        multiple = -(-batch_size // processes) * processes
        raise UsageError(
            f"--batch-size {batch_size} cannot be split evenly between {processes} processes.",
            f"Use a multiple of {processes}, such as {multiple}.",
        )


def check_enough_images(count: int, processes: int, what: str) -> None:
    if count < processes:
        raise UsageError(
            f"{processes} processes need at least {processes} {what} images, but there are only {count}.",
            "Use fewer processes (--nproc) or more images.",
        )


def launch_needed(nproc: int | None) -> bool:
    """Whether this command must start ``nproc`` workers (False inside a worker and for one process)."""
    if nproc is None:
        return False
    check_nproc(nproc)
    if launched():
        here = world().local_size
        if nproc != here:
            raise UsageError(
                f"--nproc {nproc} does not match the {here} processes per machine that torchrun started.",
                "Leave --nproc out under torchrun.",
            )
        return False
    return nproc > 1


class JobFailed(CnnvizError):
    """A ``--nproc`` job ended badly: a worker's own error, reported once by the launcher, or a killed worker."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def worker_error(message: str, exit_code: int, lost: bool = False) -> bool:
    """Leave a worker's error for its launcher (torch.distributed's error file); True if this process
    should print it too. Every rank meets the same errors, stops because of rank 0's, or learns another
    rank's through ``Comm.agree``: rank 0 speaks for all, and under ``--nproc`` the launcher speaks for
    rank 0, once. ``lost``: this rank only found a peer gone, so the launcher looks for that peer's own
    error first (torchrun shows the earliest error file as the root cause, hence the real time)."""
    if not launched():
        return True
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        record = {"message": message, "exit_code": exit_code, "timestamp": int(time.time()), "peer_lost": lost}
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(record))
    return world().is_main and os.environ.get(OWN_LAUNCHER_ENV) != "1"


class PeerLost(CnnvizError):
    """Another process of the job stopped answering (it died or was killed)."""


def launch(nproc: int, args: list[str]) -> int:
    """Run ``python -m cnnviz_cli *args`` in ``nproc`` local workers through torch.distributed's launcher.

    The rendezvous listens on 127.0.0.1 at a port the system picks (port 0), so two jobs never collide.
    Returns 0 when every worker succeeded; otherwise raises ``JobFailed`` with the message and exit
    code of rank 0's error (the workers leave their errors in files instead of printing them), or says
    which worker was killed. SIGINT/SIGTERM reach the launcher, which passes them on to every worker:
    they stop at the next batch and rank 0 marks the run interrupted (exit code 130).
    """
    with _sigterm_before_workers():
        return _launch(nproc, args)


@contextlib.contextmanager
def _sigterm_before_workers() -> Iterator[None]:
    """SIGTERM while torch loads and the rendezvous opens: stop cleanly (the launcher's own handlers,
    installed when the workers start, then pass signals on to them)."""
    def stop(_signum, _frame):
        raise Interrupted("Stopped before the workers started; nothing was stored.")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launch(nproc: int, args: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    extra_env = {OWN_LAUNCHER_ENV: "1"}
    loopback = _loopback_interface()
    if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
        extra_env["GLOO_SOCKET_IFNAME"] = loopback
    with (
        _quiet_launcher_logs(),
        _environment(extra_env),
        tempfile.TemporaryDirectory(prefix="cnnviz-launch-") as logs,
    ):
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0",
            local_addr="127.0.0.1",
            max_restarts=0,
            monitor_interval=0.1,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
        )
        try:
            elastic_launch(config, entrypoint=sys.executable)("-m", "cnnviz_cli", *args)
        except ChildFailedError as exc:
            _report(Path(logs), exc.failures)
        except SignalException:
            _report(Path(logs), {}, interrupted=True)
    return 0


def _report(logs: Path, failures: dict, interrupted: bool = False) -> None:
    """Raise the job's outcome: a killed worker first (the others only stopped because of it), then the
    lowest rank's own error, then a worker that failed without one (a bug: its traceback is above);
    "another process stopped answering" only when no rank left anything better."""
    killed = [r for r in sorted(failures) if failures[r].exitcode < 0 and failures[r].signal_name() not in ("SIGTERM", "SIGINT")]
    if killed:
        failure = failures[killed[0]]
        raise JobFailed(
            f"Worker process rank {killed[0]} (pid {failure.pid}) was killed by {failure.signal_name()}; "
            "the job was stopped.",
            EXIT_BUG,
        )
    own, lost = {}, {}
    for path in logs.glob("*/attempt_*/*/error.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            found = lost if data.get("peer_lost") else own
            found[int(path.parent.name)] = (str(data["message"]), int(data["exit_code"]))
    if own:
        raise JobFailed(*own[min(own)])
    if interrupted and not lost:
        raise JobFailed("interrupted.", EXIT_INTERRUPTED)
    silent = [r for r in sorted(failures) if r not in lost and failures[r].exitcode > 0]
    if silent or not lost:
        rank = (silent or sorted(failures))[0]
        code = failures[rank].exitcode
        above = " (its message is above)" if code > 0 else ""
        raise JobFailed(
            f"Worker process rank {rank} failed with exit code {code}{above}; the job was stopped.",
            code if code > 0 else EXIT_BUG,
        )
    raise JobFailed(*lost[min(lost)])


def _loopback_interface() -> str | None:
    with contextlib.suppress(OSError, AttributeError):
        for _index, name in socket.if_nameindex():
            if name == "lo" or name.startswith("lo0"):
                return name
    return None


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Extra variables for the workers (they inherit this process's environment)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet_launcher_logs() -> Iterator[None]:
    """The launcher logs every rendezvous step and failure; cnnviz reports outcomes itself (--debug shows them)."""
    if os.environ.get("CNNVIZ_DEBUG", "") not in ("", "0"):
        yield
        return
    logger = logging.getLogger("torch.distributed")
    loggers = [logger, *(
        other for name, other in logging.Logger.manager.loggerDict.items()
        if name.startswith("torch.distributed.") and isinstance(other, logging.Logger)
    )]
    saved = [(each, each.level, each.disabled) for each in loggers]
    logger.setLevel(logging.CRITICAL + 1)
    for each in loggers[1:]:
        each.disabled = True
    try:
        yield
    finally:
        for each, level, disabled in saved:
            each.setLevel(level)
            each.disabled = disabled


class Comm:
    """The collectives one job needs, as plain methods; with one process each is a no-op.

    ``device`` is where this rank computes: the CPU, or its own GPU (``cuda:LOCAL_RANK``) under NCCL.
    """

    def __init__(self, place: World, device: torch.device, backend: str | None):
        self.world = place
        self.device = device
        self.backend = backend

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def size(self) -> int:
        return self.world.size

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    def record(self) -> dict | None:
        """What a manifest records about the job (None for one process)."""
        if self.size == 1:
            return None
        return {"world_size": self.size, "backend": self.backend, "nodes": self.world.nodes}

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of ``tensor``'s rows (sizes differ by at most one; none repeated)."""
        return tensor if self.size == 1 else tensor.tensor_split(self.size)[self.rank]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if self.size == 1:
            return flag
        import torch

        value = torch.tensor([int(flag)], device=self.device)
        self._collective("all_reduce", value, op=self._dist().ReduceOp.MAX)
        return bool(value.item())

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place."""
        if self.size > 1:
            moved = tensor.to(self.device)
            self._collective("all_reduce", moved)
            if moved is not tensor:
                tensor.copy_(moved)
        return tensor

    def all_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's ``local`` rows concatenated in rank order, on every rank (shards may differ by one row)."""
        if self.size == 1:
            return local
        import torch

        count = torch.tensor([local.shape[0]], device=self.device)
        counts = [torch.zeros_like(count) for _ in range(self.size)]
        self._collective("all_gather", counts, count)
        longest = int(max(c.item() for c in counts))
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: local.shape[0]] = local.to(self.device)
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        self._collective("all_gather", pieces, padded)
        return torch.cat([p[: int(c.item())] for p, c in zip(pieces, counts, strict=True)]).to(local.device)

    def by_main(self, work: Callable[[], T]) -> T:
        """Rank 0 does ``work`` (store reads and writes); every rank gets its result, or raises its error,
        once it is done: this is also the barrier that keeps ranks from going on before a file is written."""
        if self.size == 1:
            return work()
        outcome: list = [None]
        failure: BaseException | None = None
        if self.is_main:
            try:
                outcome = [("ok", work())]
            except CnnvizError as exc:
                failure = exc
                outcome = [("error", type(exc), exc.message, exc.hint)]
            except BaseException as exc:
                failure = exc
                outcome = [("error", CnnvizError, "Rank 0 failed; see its message.", None)]
        self._collective("broadcast_object_list", outcome, src=0)
        if failure is not None:
            raise failure
        kind, *rest = outcome[0]
        if kind == "ok":
            return rest[0]
        cls, message, hint = rest
        raise _rebuilt(cls, message, hint)

    def agree(self, work: Callable[[], T], group=None) -> T:
        """Every rank does ``work``; if it failed on any rank, every rank raises the error of the lowest
        rank that failed (naming that rank and its machine when it is not rank 0), so that an error
        only one process meets is reported as itself and not as a peer that vanished."""
        if self.size == 1:
            return work()
        failure: CnnvizError | None = None
        mine = None
        try:
            result = work()
        except CnnvizError as exc:
            failure, mine = exc, (type(exc), exc.message, exc.hint, False)
        except Exception as exc:  # noqa: BLE001 - a bug: every rank raises it with its traceback as text
            # (a worker printing its own traceback is stopped by the launcher as soon as another exits)
            what = f"failed with {type(exc).__name__}: {_first_line(exc).rstrip('.')}."
            mine = (CnnvizError, what, "A bug; the traceback of that process:\n" + traceback.format_exc().rstrip(), True)
        outcomes: list = [None] * self.size
        self._collective("all_gather_object", outcomes, (mine, socket.gethostname()), group=group)
        failed = [rank for rank, (outcome, _host) in enumerate(outcomes) if outcome is not None]
        if not failed:
            return result
        first = failed[0]
        (cls, message, hint, bug), host = outcomes[first]
        if first == self.rank and not bug:
            raise failure
        if first != 0 or bug:
            message = f"Process rank {first} (on {host}) {message}" if bug else f"Process rank {first} (on {host}): {message}"
        raise _rebuilt(cls, message, hint)

    def local_first(self, work: Callable[[], T]) -> T:
        """``work`` on each machine's local rank 0 first, then on the other ranks: the first fills a
        cache on its machine (alone, on every core), the others then read it. Errors as in ``agree``."""
        if self.size == 1:
            return work()
        import datetime

        # Decoding a big folder can outlast the default 30-minute collective timeout: the waiting ranks
        # wait in a group of their own with a long one (a rank that dies still ends the wait at once).
        patient = self._collective("new_group", backend="gloo", timeout=datetime.timedelta(hours=LONG_WAIT_HOURS))
        first = self.world.local_rank == 0
        result = self.agree(work if first else (lambda: None), group=patient)
        later = self.agree((lambda: None) if first else work, group=patient)
        return result if first else later

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: DistributedDataParallel around ``model`` for several processes.

        DDP's gradient buckets take the parameters' layout when it is built, so on the CPU the weights
        become channels-last now and stay so (``device.channels_last`` then leaves them alone)."""
        if self.size == 1:
            return model
        import torch
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            return DistributedDataParallel(model, device_ids=[self.device.index])
        model.to(memory_format=torch.channels_last)
        return DistributedDataParallel(model)

    def _dist(self):
        import torch.distributed as dist

        return dist

    def _collective(self, name: str, *args, **kwargs):
        dist = self._dist()
        try:
            return getattr(dist, name)(*args, **kwargs)
        except (dist.DistError, RuntimeError) as exc:
            raise PeerLost(
                f"Another process of this job stopped answering ({_first_line(exc)}).",
                "The job was stopped; a training run can be continued with --resume.",
            ) from None


def _rebuilt(cls: type, message: str, hint: str | None) -> CnnvizError:
    try:
        return cls(message, hint)
    except TypeError:  # an error class with its own constructor
        error = CnnvizError(message, hint)
        error.exit_code = getattr(cls, "exit_code", EXIT_BUG)
        return error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def joined(device: torch.device) -> Iterator[Comm]:
    """Join this process's job for the duration (gloo on CPUs, NCCL on GPUs); a lone process joins nothing.

    Under a launcher a CUDA device becomes this rank's own GPU, ``cuda:LOCAL_RANK``.
    """
    place = world()
    if place.size == 1:
        yield Comm(place, device, None)
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UsageError(
            f"Several processes can share CPUs or CUDA GPUs, not {device.type.upper()}.", "Add --device cpu."
        )
    dist.init_process_group(backend)
    try:
        yield Comm(place, device, backend)
    finally:
        dist.destroy_process_group()
