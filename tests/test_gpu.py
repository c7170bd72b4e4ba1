"""GPU picking (bnflow.gpu) on a CPU machine: torch.cuda is faked to show GPUs with given free memory."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from bnflow.errors import ConfigError
import bnflow.gpu
from bnflow.gpu import GpuLockError, acquire_device, free_memory_order, process_device
from conftest import ROOT

GIB = 1 << 30


def fake_cuda(monkeypatch, free: dict[int, int]) -> None:
    """Make torch.cuda report len(free) GPUs, GPU i with free[i] bytes free (read at call time, so tests can edit)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 * GIB))


@pytest.fixture
def gpus(monkeypatch, tmp_path):
    """Three fake GPUs; by free memory the order is 1 (30 GiB), 2 (20 GiB), 0 (10 GiB). Locks go under tmp_path."""
    free = {0: 10 * GIB, 1: 30 * GIB, 2: 20 * GIB}
    fake_cuda(monkeypatch, free)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("BNFLOW_GPU_LOCK_DIR", str(tmp_path / "locks"))
    return free


def test_concurrent_jobs_get_different_gpus_most_free_memory_first(gpus, tmp_path):
    leases = [acquire_device("auto", wait_s=0)[1] for _ in range(3)]
    assert [lz.device for lz in leases] == [torch.device("cuda", i) for i in (1, 2, 0)]
    assert [lz.lock_path for lz in leases] == [tmp_path / "locks" / f"gpu{i}.lock" for i in (1, 2, 0)]
    assert all(lz.held and not lz.shared for lz in leases)
    holder = leases[0].lock_path.with_suffix(".holder")
    assert holder.read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    assert leases[0].lock_path.read_text() == ""  # the lock file itself is never written
    # a fourth job, with every GPU locked and no wait, shares the GPU with the most free memory, unlocked
    device, extra = acquire_device("auto", wait_s=0)
    assert device == torch.device("cuda", 1) and extra.shared and not extra.held and extra.lock_path is None
    for lz in leases:
        lz.close()


def test_the_order_is_read_when_acquiring(gpus):
    gpus[0] = 70 * GIB  # another process freed memory on GPU 0
    device, lease = acquire_device("auto", wait_s=0)
    assert device == torch.device("cuda", 0) and lease.lock_path.name == "gpu0.lock"
    lease.close()


def test_free_memory_order_puts_unqueryable_gpus_last(monkeypatch):
    free = {0: 5, 1: 9, 2: 5, 3: 7}

    def mem_get_info(i):
        if i == 1:
            raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")
        return free[i], 10

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert free_memory_order(4) == [3, 0, 2, 1]  # ties (0 and 2) by ordinal


def test_release_frees_the_gpu(gpus):
    _, first = acquire_device("auto", wait_s=0)
    with acquire_device("auto", wait_s=0)[1] as second:
        assert (first.device.index, second.device.index) == (1, 2)
    assert not second.held
    with acquire_device("auto", wait_s=0)[1] as third:
        assert third.device.index == 2  # freed by leaving the with block
    first.close()
    first.close()  # idempotent
    device, again = acquire_device("auto", wait_s=0)
    assert device.index == 1 and again.held and not again.shared
    again.close()


def test_waits_for_a_gpu_that_another_job_releases(gpus, caplog):
    held = {lz.device.index: lz for lz in (acquire_device("auto", wait_s=0)[1] for _ in range(3))}
    timer = threading.Timer(0.3, held[2].close)
    timer.start()
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="bnflow.gpu"):
        device, lease = acquire_device("auto", wait_s=20, poll_s=0.05)
    elapsed = time.monotonic() - t0
    timer.join()
    assert device.index == 2 and lease.held and not lease.shared
    assert 0.25 < elapsed < 10
    for lz in (lease, held[0], held[1]):
        lz.close()
    assert "all 3 GPUs are locked by other jobs" in caplog.text and "gpu1.lock: pid" in caplog.text


def test_shares_after_waiting_the_full_time(gpus):
    held = [acquire_device("auto", wait_s=0)[1] for _ in range(3)]
    t0 = time.monotonic()
    device, lease = acquire_device("auto", wait_s=0.3, poll_s=0.05)
    assert 0.3 <= time.monotonic() - t0 < 5
    assert device.index == 1 and lease.shared
    for lz in held:
        lz.close()


CHILD = textwrap.dedent("""
    import sys, torch
    free = {0: 10 << 30, 1: 30 << 30, 2: 20 << 30}
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 3
    torch.cuda.mem_get_info = lambda i: (free[i], 80 << 30)
    from bnflow.gpu import acquire_device
    device, lease = acquire_device("auto", wait_s=0)
    print(device.index, lease.held, flush=True)
    sys.stdin.readline()  # hold the GPU until the parent says so (or kills this process)
""")


def test_a_second_process_gets_another_gpu_and_a_killed_one_frees_its_gpu(gpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert child.stdout.readline().split() == ["1", "True"]
        device, mine = acquire_device("auto", wait_s=0)
        assert device.index == 2 and mine.held
    finally:
        child.kill()  # no close(), no atexit: the kernel drops the lock with the process
        child.wait(timeout=30)
    device, freed = acquire_device("auto", wait_s=0)
    assert device.index == 1 and freed.held and not freed.shared
    mine.close()
    freed.close()


def test_explicit_specs_bypass_locking(gpus, tmp_path):
    for spec, expected in [("cpu", torch.device("cpu")), ("cuda", torch.device("cuda")),
                           ("cuda:2", torch.device("cuda", 2))]:
        device, lease = acquire_device(spec, wait_s=600)
        assert device == expected and not lease.held and lease.lock_path is None and not lease.shared
    assert not (tmp_path / "locks").exists()
    held = [acquire_device("auto", wait_s=0)[1] for _ in range(3)]
    t0 = time.monotonic()
    assert acquire_device("cuda:1", wait_s=600)[0] == torch.device("cuda", 1)  # locked by `auto` jobs: not waited for
    assert time.monotonic() - t0 < 1
    for lz in held:
        lz.close()


def test_bad_specs_name_the_key(gpus, monkeypatch):
    with pytest.raises(ConfigError, match=r"train\.execution\.device is 'cuda:3' but only 3 CUDA GPU\(s\)"):
        acquire_device("cuda:3")
    with pytest.raises(ConfigError, match=r"train\.execution\.device: 'gpu0' is not a device; use auto, cpu"):
        acquire_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"'cuda:0' but no CUDA GPU is visible; use auto or cpu"):
        acquire_device("cuda:0")
    device, lease = acquire_device("auto")
    assert device == torch.device("cpu") and not lease.held


def test_cuda_visible_devices_is_respected(gpus, monkeypatch, tmp_path):
    # one GPU assigned by a scheduler (SLURM, Kubernetes): use it, lock nothing
    fake_cuda(monkeypatch, {0: GIB})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    device, lease = acquire_device("auto", wait_s=0)
    assert device == torch.device("cuda", 0) and not lease.held and not (tmp_path / "locks").exists()
    # several listed: lock among them, lock files named by physical id, devices by visible ordinal
    fake_cuda(monkeypatch, {0: GIB, 1: 2 * GIB})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-8a1f:x")
    got = [acquire_device("auto", wait_s=0)[1] for _ in range(2)]
    assert [(lz.device.index, lz.lock_path.name) for lz in got] == [(1, "gpuGPU-8a1f_x.lock"), (0, "gpu3.lock")]
    for lz in got:
        lz.close()


def test_lock_dir_argument_overrides_the_environment(gpus, tmp_path):
    device, lease = acquire_device("auto", lock_dir=tmp_path / "other", wait_s=0)
    assert lease.lock_path == tmp_path / "other" / "gpu1.lock"
    with acquire_device("auto", wait_s=0)[1] as other:  # a job using the default folder does not see that lock
        assert other.device == device and other.lock_path.parent == tmp_path / "locks"
    lease.close()


def test_process_device_locks_once_per_process(gpus, monkeypatch):
    monkeypatch.setattr("bnflow.gpu._PROCESS_LEASES", {})
    first = process_device("auto", wait_s=0)
    assert first == torch.device("cuda", 1)
    assert [process_device("auto", wait_s=0) for _ in range(5)] == [first] * 5  # no GPU locked against itself
    other = acquire_device("auto", wait_s=0)[1]  # another job still sees GPU 1 as taken
    assert other.device == torch.device("cuda", 2)
    assert process_device("cuda:0") == torch.device("cuda", 0)
    other.close()
    bnflow.gpu._PROCESS_LEASES.pop("auto").close()


# ---------------------------------------------------------------------------------------- attacks on the lock folder
def test_a_symlink_planted_as_a_lock_file_is_refused_and_its_target_untouched(gpus, tmp_path):
    """Issue 13.3: gpu1.lock -> a file of the user; the old code opened it with O_CREAT, truncated it, chmod-ed it."""
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's data\n")
    precious.chmod(0o600)
    before = (precious.read_bytes(), precious.stat().st_mode)
    acquire_device("auto", lock_dir=tmp_path / "locks", wait_s=0)[1].close()  # creates the folder
    (tmp_path / "locks" / "gpu1.lock").unlink()
    (tmp_path / "locks" / "gpu1.lock").symlink_to(precious)
    with pytest.raises(GpuLockError, match=r"gpu1\.lock: the GPU lock file is a symbolic link; remove it"):
        acquire_device("auto", wait_s=0)
    assert (precious.read_bytes(), precious.stat().st_mode) == before


def test_an_existing_lock_file_is_neither_truncated_nor_chmod_ed(gpus, tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    lock = locks / "gpu1.lock"
    lock.write_text("left by an earlier job\n")
    lock.chmod(0o640)
    with acquire_device("auto", wait_s=0)[1] as lease, acquire_device("auto", wait_s=0)[1] as second:
        assert lease.lock_path == lock and lease.held
        assert lock.read_text() == "left by an earlier job\n" and lock.stat().st_mode & 0o777 == 0o640
        assert second.lock_path == locks / "gpu2.lock"
        assert second.lock_path.stat().st_mode & 0o777 == 0o600  # created by this job: private


def test_the_default_lock_folder_is_per_user_and_private(monkeypatch, tmp_path):
    fake_cuda(monkeypatch, {0: GIB, 1: GIB})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("BNFLOW_GPU_LOCK_DIR", raising=False)
    assert bnflow.gpu.DEFAULT_LOCK_DIR == Path(f"/tmp/bnflow-gpu-locks-{os.getuid()}")
    folder = tmp_path / f"bnflow-gpu-locks-{os.getuid()}"
    monkeypatch.setattr(bnflow.gpu, "DEFAULT_LOCK_DIR", folder)
    with acquire_device("auto", wait_s=0)[1] as lease:
        assert lease.lock_path.parent == folder
    assert folder.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_lock_folder_others_can_write_to_is_refused(gpus, tmp_path, mode):
    locks = tmp_path / "locks"
    locks.mkdir()
    locks.chmod(mode)
    with pytest.raises(GpuLockError, match=rf"{locks}: the GPU lock folder is writable by .*chmod 700"):
        acquire_device("auto", wait_s=0)
    assert not any(locks.iterdir())


def test_a_lock_folder_of_another_user_or_a_symlink_is_refused(gpus, tmp_path, monkeypatch):
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 4242)  # the folder now belongs to "someone else"
    with pytest.raises(GpuLockError, match=rf"{locks}: the GPU lock folder belongs to another user \(uid {real_uid}\)"):
        acquire_device("auto", wait_s=0)
    monkeypatch.setattr(os, "getuid", lambda: real_uid)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    locks.rmdir()
    locks.symlink_to(elsewhere)
    with pytest.raises(GpuLockError, match=rf"{locks}: the GPU lock folder is a symbolic link"):
        acquire_device("auto", wait_s=0)
    assert not any(elsewhere.iterdir())
