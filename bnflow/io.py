"""Atomic file writes and provenance records: a killed job never leaves a file a later step would accept."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import gzip
import hashlib
import io
import json
import numbers
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from bnflow.errors import ConfigError, OutputExistsError

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
"""The one format of every step's log lines, the CLI's and its worker processes'."""


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    The rename makes the write atomic against a killed process. `durable` also fsyncs the data first, so the file
    survives a power loss; resume states skip that (it can cost seconds on network disks and they are rewritten often).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_files(paths: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths for several files of one step; rename them all into place only once all are written.

    A step whose outputs go together (claims.csv, .json, .md) then never leaves some of them new and some old when
    it fails half way (a full disk): either every file is replaced, or none is, and the same command runs again.
    """
    paths = [Path(p) for p in paths]
    scratch = paths[0].parent / f".{paths[0].stem}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        tmps = [scratch / p.name for p in paths]
        yield tmps
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as sorted, indented JSON atomically (stable diffs)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


FLOAT_FORMAT = ".6g"
"""Floats in committed tables: 6 significant digits, what float32 training supports (issue 11: diffs that mean
something). `format` spells NaN and ±inf as nan, inf, -inf, which pandas and the csv module read back as floats."""


def format_cell(value: Any) -> Any:
    """One CSV cell: a non-integral real number with FLOAT_FORMAT, None as an empty cell, anything else as is."""
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return format(float(value), FLOAT_FORMAT)
    return value


def write_table(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> None:
    """A tidy CSV, atomically: floats with 6 significant digits (`format_cell`), rows and columns in the order given.

    Args:
        path: the CSV to write; a name ending in .gz writes it gzip-compressed (gzip_bytes).
        rows: one mapping per row; every row holds every column.
        columns: column order (default: the first row's keys; no rows and no columns writes an empty header).
    """
    columns = columns or (tuple(rows[0]) if rows else ())
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([format_cell(r[c]) for c in columns])
    data = buf.getvalue().encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip_bytes(data) if Path(path).name.endswith(".gz") else data)


RUN_TABLE = "{}.csv.gz"
"""The file name of a run's per-step table (metrics, landscape, ics, act_channels, act_units) in
runs/{cell}/s{seed}/."""


def gzip_bytes(data: bytes) -> bytes:
    """gzip `data` with a fixed header (no file name, mtime 0) at level 9: the same content gives the same bytes on
    every run, so a re-run diffs empty (the runs' dense tables, `*.csv.gz`: bnflow.train.cell says why)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def publish_dir(src: Path, dst: Path, *, force: bool = False) -> None:
    """Move a finished folder into place with one rename; refuse to replace a non-empty one unless `force`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    check_absent(dst, force=force)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)


def check_absent(*paths: Path, force: bool = False) -> None:
    """Fail before any work if a completed output is already there (no silent overwrite)."""
    for p in paths:
        if p.exists() and not force and (p.is_file() or any(p.iterdir())):
            raise OutputExistsError(f"{p}: already holds completed results; delete it (or pass --force) to redo them")


OUTPUT_LOCK_DIR_ENV = "BNFLOW_OUTPUT_LOCK_DIR"
"""Where the step locks live (default: a private folder of this user in the temp folder, one per host)."""


def _output_lock_dir() -> Path:
    """The step-lock folder, created 0700; refused unless it is a real folder of this user that no one else can
    write to (a lock file someone else planted could block or fool the steps)."""
    path = Path(os.environ.get(OUTPUT_LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"bnflow-output-locks-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid()
            or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise ConfigError(f"{path}: the step-lock folder must be a folder of yours that no one else can write to "
                          f"(not a symbolic link); `chmod 700 {path}` or set {OUTPUT_LOCK_DIR_ENV} to another folder")
    return path


@contextlib.contextmanager
def step_lock(primary: Path, outputs: list[Path], on_wait=None) -> Iterator[bool]:
    """Hold the one lock of a step's outputs while the step runs; yield whether another run wrote them meanwhile.

    Snakemake and `dvc repro` run the same `python -m bnflow <step>` commands and share no lock of their own: two
    runs of one step at once (one per tool) would each find, delete or half-replace the other's outputs. Every step
    takes this lock (an exclusive `flock`, keyed by the resolved path of its first output, in a private folder of
    this user: the same for both tools) before it looks at its outputs, and keeps it until they are published, so
    the two runs take turns. The second one then finds outputs newer than its own start: the other run's fresh
    results, which it replaces on success instead of refusing them (and so failing, after which Snakemake would
    delete them as outputs of a failed job). One host: a cluster's jobs on other hosts do not see this lock.

    Args:
        primary: the step's first output (the lock's key).
        outputs: every output path, checked for writes by another run while this one waited.
        on_wait: called with no argument when the lock is busy, before waiting (to log that).
    """
    started = time.time()
    digest = hashlib.sha256(str(Path(primary).resolve()).encode()).hexdigest()[:20]
    lock_path = _output_lock_dir() / f"{digest}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        # ctime: a folder published by a rename keeps the mtime of its last entry, but the rename sets its ctime
        written = waited and any(os.path.lexists(p) and os.lstat(p).st_ctime >= started - 1.0 for p in outputs)
        yield written
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def out_of_space(e: OSError) -> bool:
    """Whether an OSError means the disk (or the user's quota) is full."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def git_revision(cwd: str | Path = ".") -> str:
    """The checked-out commit, with '+dirty' when tracked files differ; 'unknown' outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.strip() + ("+dirty" if dirty.strip() else "")


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the numbers."""
    out = {"python": platform.python_version()}
    for name in ("bnflow", "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_description(device: str) -> dict[str, str]:
    """What ran the numbers: device string, GPU name when CUDA, host platform."""
    info = {"device": str(device), "platform": platform.platform(), "processor": platform.machine()}
    return info | _gpu_facts(device)


def _gpu_facts(device: str) -> dict[str, str]:
    if not str(device).startswith("cuda"):
        return {}
    import torch

    return {"gpu": torch.cuda.get_device_name(torch.device(device)), "cuda": str(torch.version.cuda)}


def code_revision(cwd: str | Path = ".") -> str:
    """The git tree hash of the bnflow/ package at HEAD ('+dirty' when the working copy of bnflow/ differs).

    Unlike the commit, it changes only when the code that computes the numbers does: committing results, docs or
    tests leaves it as it was, so re-running unchanged code rewrites provenance.json byte for byte.
    """
    try:
        tree = subprocess.run(["git", "rev-parse", "HEAD:bnflow"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "bnflow"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return tree + ("+dirty" if dirty.strip() else "")


def run_provenance(device: str) -> dict[str, Any]:
    """The committed provenance.json of one run: facts about what computed it, none about when or where.

    code revision (the git tree of bnflow/, see code_revision), package versions, device (device string; GPU name
    and CUDA version on a GPU) and platform; no wall time, host name, absolute path, commit or command line (those go
    to the logs), so it changes only when these facts do (issue 11).
    """
    return {"code_revision": code_revision(), "packages": package_versions(),
            "device": {"device": str(device)} | _gpu_facts(device), "platform": platform.platform()}


def provenance(params_plain: dict, device: str, argv: list[str] | None = None) -> dict[str, Any]:
    """The provenance block stored with every output: resolved params, git revision, packages, device, command."""
    return {
        "params": params_plain,
        "git_revision": git_revision(),
        "packages": package_versions(),
        "device": device_description(device),
        "command": " ".join(argv if argv is not None else sys.argv),
    }
