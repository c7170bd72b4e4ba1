"""Pick a GPU for one job on a host that runs several GPU jobs at once: each job locks a free GPU for itself.

Snakemake starts up to N GPU jobs at once under `--resources gpu=N`, but it never says *which* GPU a job should use
(it sets no CUDA_VISIBLE_DEVICES), so without coordination every job would land on cuda:0. Here each job takes an
exclusive, non-blocking `flock` on `<lock dir>/gpu<id>.lock`, trying the GPUs with the most free memory first, so
concurrent jobs on one host end up on different GPUs. The kernel drops the lock when the lock file's descriptor is
closed: when the Lease is closed, and at the latest when the process exits, however it exits (even when killed).

The lock folder is the user's own (default /tmp/bnflow-gpu-locks-<uid>, created 0700): a folder another user owns, or
that others may write to, is refused, since whoever can write there could plant a symlink named like a lock file.
Lock files are opened with O_NOFOLLOW and never truncated or chmod-ed: a symlink planted in their place is refused
and the file it points to stays untouched. Who holds a GPU is written to `gpu<id>.holder`, replaced by a rename.
Jobs of different users therefore do not see each other's locks (they coordinate through the scheduler, or share).

Cluster schedulers (SLURM, Kubernetes) already give each job its own GPU through CUDA_VISIBLE_DEVICES; a job that
sees exactly one GPU that way uses it without any lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bnflow.errors import BnflowError, ConfigError

log = logging.getLogger("bnflow.gpu")
LOCK_DIR_ENV = "BNFLOW_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(f"/tmp/bnflow-gpu-locks-{os.getuid()}")
# A GPU job runs for minutes, so a job that finds every GPU taken usually gets one within a few minutes; sharing a
# GPU (the fallback) is slower for both jobs but never wrong.
DEFAULT_WAIT_S = 600.0
DEFAULT_POLL_S = 5.0


class GpuLockError(BnflowError):
    """The GPU lock folder or a lock file in it cannot be created or opened."""


@dataclass(eq=False)
class Lease:
    """The device a job runs on and, for `auto` on a multi-GPU host, the lock that reserves it.

    Attributes:
        device: the torch device to use.
        lock_path: the lock file held for `device`, or None when nothing is locked (cpu, an explicit device, a GPU
            assigned through CUDA_VISIBLE_DEVICES, or a shared GPU).
        shared: True when every GPU stayed locked by other jobs for the whole wait and this job shares the one with
            the most free memory.
    """

    device: torch.device
    lock_path: Path | None = None
    shared: bool = False
    _fd: int | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        """Whether this lease still holds its lock."""
        return self._fd is not None

    def close(self) -> None:
        """Release the lock (if any) so another job can take the GPU; calling it again does nothing."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def visible_gpu_ids() -> list[str]:
    """The physical ids of the visible CUDA devices, in torch's ordinal order (cuda:0 first).

    Without CUDA_VISIBLE_DEVICES these are "0", "1", ...; with it, its entries (indices or GPU-/MIG- UUIDs), so jobs
    that see different subsets of a host's GPUs still name each physical GPU's lock file the same way.
    """
    n = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(n)]
    ids = [x.strip() for x in listed.split(",") if x.strip()][:n]
    return ids + [str(i) for i in range(len(ids), n)]  # CUDA ignores entries after an invalid one


def free_memory_order(n: int) -> list[int]:
    """Ordinals 0..n-1 sorted by free device memory, most first (ties: lower ordinal first).

    A GPU whose memory cannot be queried (e.g. held in exclusive-process mode by another process) goes last. Note that
    `torch.cuda.mem_get_info` creates a CUDA context on each device it queries (a few hundred MB of device memory
    each, for the life of the calling process).
    """
    free = {}
    for i in range(n):
        try:
            free[i] = torch.cuda.mem_get_info(i)[0]
        except RuntimeError:
            free[i] = -1
    return sorted(range(n), key=lambda i: (-free[i], i))


def _explicit_device(spec: str, key: str) -> torch.device:
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"{key}: {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is {spec!r} but no CUDA GPU is visible; use auto or cpu")
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise ConfigError(f"{key} is {spec!r} but only {n} CUDA GPU(s) are visible (cuda:0 to cuda:{n - 1}); "
                              "use auto or a visible index")
    return device


def _lock_dir(lock_dir: Path | None) -> Path:
    """The lock folder, created 0700 when missing; refused unless it is a real folder of this user that no one else
    may write to."""
    path = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    fix = f"set {LOCK_DIR_ENV} to a folder of your own on this host's local disk"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # ours: a umask may only have narrowed it, but say exactly what it is
    except FileExistsError:
        pass
    except OSError as e:
        raise GpuLockError(f"{path}: cannot create the GPU lock folder ({e.strerror}); {fix}") from None
    try:
        st = os.lstat(path)
    except OSError as e:
        raise GpuLockError(f"{path}: cannot inspect the GPU lock folder ({e.strerror}); {fix}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise GpuLockError(f"{path}: the GPU lock folder is {what}; remove it or {fix}")
    if st.st_uid != os.getuid():
        raise GpuLockError(f"{path}: the GPU lock folder belongs to another user (uid {st.st_uid}); {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "other users" if st.st_mode & stat.S_IWOTH else "its group"
        raise GpuLockError(f"{path}: the GPU lock folder is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); "
                           f"`chmod 700 {path}` or {fix}")
    return path


def _open_lock_file(path: Path) -> int:
    """A descriptor of the lock file at `path`, created 0600 if missing; a symlink or non-file there is refused."""
    flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = os.open(path, flags)  # an existing lock file: used as it is, never truncated or chmod-ed
    except OSError as e:
        what = "is a symbolic link" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
        raise GpuLockError(f"{path}: the GPU lock file {what}; remove it or set {LOCK_DIR_ENV} to another folder") \
            from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise GpuLockError(f"{path}: the GPU lock file is not a regular file of yours; remove it or set "
                           f"{LOCK_DIR_ENV} to another folder")
    return fd


def _try_lock(device: torch.device, path: Path) -> Lease | None:
    """Take the lock at `path` without blocking; None when another job holds it."""
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _write_holder(path)
    return Lease(device, lock_path=path, _fd=fd)


def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_suffix(".holder")


def _write_holder(lock_path: Path) -> None:
    """Who holds the lock, for a person looking at a busy GPU: a new file renamed over the old one (a rename replaces
    a planted symlink itself, never the file it points to)."""
    holder = _holder_path(lock_path)
    tmp = holder.with_name(f".{holder.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, holder)
    with contextlib.suppress(OSError):
        tmp.unlink()


def _holders(paths: list[Path]) -> str:
    out = []
    for p in paths:
        with contextlib.suppress(OSError):
            out.append(f"{p.name}: {_holder_path(p).read_text().strip() or '?'}")
    return "; ".join(out)


def acquire_device(spec: str = "auto", *, lock_dir: Path | None = None, wait_s: float = DEFAULT_WAIT_S,
                   poll_s: float = DEFAULT_POLL_S, key: str = "train.execution.device") -> tuple[torch.device, Lease]:
    """Resolve a device spec to a torch device and, for `auto` on a multi-GPU host, lock a free GPU for this job.

    - `cpu`, `cuda`, `cuda:N` (or any other torch device string) are used as given, with no lock.
    - `auto` without CUDA: the CPU.
    - `auto` with CUDA_VISIBLE_DEVICES listing one GPU (a scheduler's assignment): cuda:0, with no lock.
    - `auto` otherwise: the first GPU, in order of most free memory, whose lock this call can take. If every GPU is
      locked by other jobs it retries every `poll_s` seconds for up to `wait_s` seconds, then shares the GPU with
      the most free memory (`Lease.shared`).

    Args:
        spec: the device setting (params.yaml `train.execution.device`).
        lock_dir: folder of the lock files, on this host's local disk, owned by this user and writable by no one
            else; default `$BNFLOW_GPU_LOCK_DIR`, else /tmp/bnflow-gpu-locks-<uid>. Every job that should avoid the
            others' GPUs must use the same folder.
        wait_s: seconds to wait for a GPU when all are locked, before sharing one; 0 shares at once.
        poll_s: seconds between tries while waiting.
        key: the params key named in error messages.

    Returns:
        (device, lease). Keep the lease for as long as the job uses the device and close it (or leave the `with`
        block) when done; a lease that is dropped keeps its lock until the process exits. The lock is not passed to
        spawned or exec'd child processes: give those the resolved device as an explicit `cuda:N`.
    """
    if spec != "auto":
        device = _explicit_device(spec, key)
        return device, Lease(device)
    if not torch.cuda.is_available():
        return torch.device("cpu"), Lease(torch.device("cpu"))
    ids = visible_gpu_ids()
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None and len(ids) == 1:
        log.info("using cuda:0 (GPU %s, assigned through CUDA_VISIBLE_DEVICES)", ids[0])
        return torch.device("cuda", 0), Lease(torch.device("cuda", 0))
    folder = _lock_dir(lock_dir)
    paths = [folder / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu_id)}.lock" for gpu_id in ids]
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        order = free_memory_order(len(ids))
        for i in order:
            lease = _try_lock(torch.device("cuda", i), paths[i])
            if lease is not None:
                log.info("using cuda:%d (GPU %s), locked in %s", i, ids[i], paths[i])
                return lease.device, lease
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not waiting:
            log.info("all %d GPUs are locked by other jobs (%s); waiting up to %.0f s for one",
                     len(ids), _holders(paths), wait_s)
            waiting = True
        time.sleep(min(poll_s, left))
    device = torch.device("cuda", order[0])
    log.warning("all %d GPUs stayed locked for %.0f s; sharing cuda:%d (GPU %s), the one with the most free memory",
                len(ids), wait_s, order[0], ids[order[0]])
    return device, Lease(device, shared=True)


_PROCESS_LEASES: dict[str, Lease] = {}  # spec -> the lease this process holds for it, until it exits


def process_device(spec: str = "auto", **kwargs) -> torch.device:
    """`acquire_device` for a job's main process: the lock is held until the process exits.

    Later calls with the same spec in the same process return the same device and take no second lock, so a process
    that resolves its device in several places (or a test session that trains many cells) never locks every GPU
    against itself. Worker processes must be given the resolved device (`str(device)`, e.g. "cuda:2"), not "auto".

    Args:
        spec: the device setting, as for `acquire_device`.
        **kwargs: lock_dir, wait_s, poll_s, key: as for `acquire_device` (used by the first call only).
    """
    if spec not in _PROCESS_LEASES:
        _PROCESS_LEASES[spec] = acquire_device(spec, **kwargs)[1]
    return _PROCESS_LEASES[spec].device
