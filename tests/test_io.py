"""Committed tables diff well (issue 11): 6 significant digits, non-finite values spelled out, stable order."""

from __future__ import annotations

import csv
import gzip
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bnflow import io


def test_floats_have_six_significant_digits_and_non_finite_values_are_spelled_out(tmp_path):
    rows = [
        {"step": 0, "split": "train", "loss": 2.302585092994046, "acc": None},
        {"step": 10, "split": "test", "loss": float("nan"), "acc": 0.1 + 0.2},
        {"step": 20, "split": "train", "loss": float("inf"), "acc": np.float32(0.1)},
        {"step": 30, "split": "train", "loss": -float("inf"), "acc": 1.0},
        {"step": 40, "split": "train", "loss": 1.234565e-7, "acc": 123456789.0},
    ]
    path = tmp_path / "metrics.csv"
    io.write_table(path, rows, ("step", "split", "loss", "acc"))
    assert path.read_text() == (
        "step,split,loss,acc\n"
        "0,train,2.30259,\n"
        "10,test,nan,0.3\n"
        "20,train,inf,0.1\n"        # float32 0.1 is 0.100000001...: six digits hide float32 noise
        "30,train,-inf,1\n"
        "40,train,1.23457e-07,1.23457e+08\n"
    )
    back = pd.read_csv(path)
    assert math.isnan(back.loss[1]) and back.loss[2] == math.inf and back.loss[3] == -math.inf
    assert back.acc.isna()[0] and back.step.tolist() == [0, 10, 20, 30, 40]  # ints stay ints, None is empty
    for value in (2.302585092994046, 1.234565e-7, 0.1 + 0.2, 123456789.0):
        assert abs(float(io.format_cell(value)) - value) <= 5e-6 * abs(value)  # what 6 digits promise


def test_column_order_is_the_one_given_and_values_keep_their_text(tmp_path):
    path = tmp_path / "t.csv"
    io.write_table(path, [{"b": True, "a": "x,y", "c": 3}], ("c", "a", "b"))
    assert list(csv.reader(path.open())) == [["c", "a", "b"], ["3", "x,y", "True"]]
    io.write_table(path, [{"z": 1.5, "y": 2}])  # default: the first row's key order
    assert path.read_text() == "z,y\n1.5,2\n"


def test_a_gz_table_is_the_plain_tables_bytes_gzip_compressed_and_byte_stable(tmp_path):
    """A run's per-step tables (RUN_TABLE, `*.csv.gz`) are write_table's plain CSV, gzip-compressed with a fixed header
    (no mtime, no file name): the same rows give the same bytes at another time and under another name."""
    assert io.RUN_TABLE.format("metrics") == "metrics.csv.gz"
    columns = ("step", "split", "loss", "acc")
    for rows in ([{"step": 0, "split": "train", "loss": 2.302585092994046, "acc": None},
                  {"step": 10, "split": "test", "loss": float("nan"), "acc": 0.1 + 0.2},
                  {"step": 20, "split": "train", "loss": float("inf"), "acc": np.float32(0.1)}],
                 []):  # no rows: the header alone
        plain, gz = tmp_path / "t.csv", tmp_path / "metrics.csv.gz"
        io.write_table(plain, rows, columns)
        io.write_table(gz, rows, columns)
        raw = gz.read_bytes()
        assert raw[:3] == b"\x1f\x8b\x08"  # gzip, deflate
        assert raw[3] == 0 and raw[4:8] == b"\0\0\0\0"  # no flags (no file name), mtime 0
        assert gzip.decompress(raw) == plain.read_bytes()
        assert plain.read_bytes().startswith(b"step,split,loss,acc\n")
        pd.testing.assert_frame_equal(pd.read_csv(gz), pd.read_csv(plain))
        time.sleep(1.1)  # a header that carried the time would differ now
        (tmp_path / "again").mkdir(exist_ok=True)
        again = tmp_path / "again" / "ics.csv.gz"  # another folder and name
        io.write_table(again, rows, columns)
        assert again.read_bytes() == raw
        assert io.gzip_bytes(plain.read_bytes()) == raw
        assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "metrics.csv.gz", "t.csv"]  # no temp files


def test_run_provenance_holds_no_volatile_fact():
    prov = io.run_provenance("cpu")
    assert set(prov) == {"code_revision", "packages", "device", "platform"}
    assert prov["device"] == {"device": "cpu"} and "torch" in prov["packages"]
    assert str(Path.cwd()) not in repr(prov) and sys.executable not in repr(prov)  # no absolute path
    assert io.run_provenance("cpu") == prov  # same facts, same record


def test_the_step_lock_folder_must_be_private_and_a_lock_is_exclusive(tmp_path, monkeypatch):
    import fcntl
    import os

    import pytest

    from bnflow.errors import ConfigError

    target = tmp_path / "someone-elses"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    for folder, mode in ((tmp_path / "link", None), (tmp_path / "open", 0o777)):
        if mode is not None:
            folder.mkdir()
            os.chmod(folder, mode)
        monkeypatch.setenv(io.OUTPUT_LOCK_DIR_ENV, str(folder))
        with pytest.raises(ConfigError, match="step-lock folder must be a folder of yours"):
            with io.step_lock(tmp_path / "out.csv", []):
                pass
    assert list(target.iterdir()) == []  # nothing planted through the link
    monkeypatch.setenv(io.OUTPUT_LOCK_DIR_ENV, str(tmp_path / "locks"))
    with io.step_lock(tmp_path / "out.csv", []) as written:
        assert written is False
        (lock,) = (tmp_path / "locks").iterdir()
        fd = os.open(lock, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # held: another process's step would wait here
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the step
    os.close(fd)
    assert oct((tmp_path / "locks").stat().st_mode & 0o777) == "0o700"
