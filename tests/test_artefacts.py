"""The large artefacts (bnflow.dag.artefacts): the data's manifest, rebuilding absent data against it, the steps'
.dvc records, and the one-line refusal when checkpoints are absent (issue 24: a fresh clone under plain `dvc repro`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bnflow.check_results import check, judge
from bnflow.config import load_params
from bnflow.dag import manifest_path
from bnflow.dag.artefacts import ensure_data, require_present, track_with_dvc
from bnflow.errors import DataError
from bnflow.prepare import data_manifest, prepare
from conftest import ROOT, copy_params

PY = sys.executable


def dln_params(tmp_path: Path):
    """params.yaml with a small DLN problem (3 seeds, 64 samples of dim 4)."""
    raw = yaml.safe_load(copy_params(tmp_path).read_text())
    raw["train"]["seeds"]["n"]["dln"] = 3
    raw["train"]["dln"]["n_samples"], raw["train"]["dln"]["dim"] = 64, 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(tmp_path / "params.yaml", check_files=False)


def test_the_manifest_holds_each_arrays_sha256_and_ignores_the_zip_bytes(tmp_path):
    params = dln_params(tmp_path)
    data = tmp_path / "dln.npz"
    prepare(params, "dln", data)
    manifest = json.loads(manifest_path(data).read_text())
    with np.load(data) as stored:  # an independent computation: every array's C-order bytes
        expected = {k: {"dtype": str(stored[k].dtype), "shape": list(stored[k].shape),
                        "sha256": hashlib.sha256(np.ascontiguousarray(stored[k]).tobytes()).hexdigest()}
                    for k in stored.files}
    assert manifest == {"model": "dln", "file": "dln.npz", "arrays": expected}
    assert {"x_s0", "a_s0", "x_s2", "a_s2"} <= set(expected)
    # the same arrays in a zip written otherwise (compressed, other entry times) have the same manifest
    with np.load(data) as stored:
        np.savez_compressed(tmp_path / "other.npz", **{k: stored[k] for k in stored.files})
    assert (tmp_path / "other.npz").read_bytes() != data.read_bytes()
    assert data_manifest(tmp_path / "other.npz", "dln")["arrays"] == expected


def test_absent_data_is_rebuilt_and_checked_against_its_manifest(tmp_path):
    params = dln_params(tmp_path)
    data = tmp_path / "results" / "data" / "dln.npz"
    prepare(params, "dln", data)
    committed = manifest_path(data).read_text()
    data.unlink()  # a fresh clone: the manifest is in git, the data in no cache here
    ensure_data(params, "dln", data)
    assert data.is_file() and json.dumps(data_manifest(data, "dln"), indent=2, sort_keys=True) + "\n" == committed
    assert manifest_path(data).read_text() == committed  # the committed record is what is checked, never rewritten


def test_data_that_differs_from_its_manifest_is_refused_naming_the_arrays(tmp_path):
    params = dln_params(tmp_path)
    data = tmp_path / "dln.npz"
    prepare(params, "dln", data)
    manifest = json.loads(manifest_path(data).read_text())
    manifest["arrays"]["a_s1"]["sha256"] = "0" * 64  # the committed results were computed on other data
    manifest_path(data).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"dln\.npz: its arrays differ from those .*dln\.json records \(a_s1\).*"
                                        r"`dvc repro -f -s prepare@dln`"):
        ensure_data(params, "dln", data)
    data.unlink()  # rebuilt from params, the same check applies
    with pytest.raises(DataError, match=r"\(a_s1\)"):
        ensure_data(params, "dln", data)
    manifest_path(data).write_text("{not json")
    with pytest.raises(DataError, match=r"dln\.json: not a data manifest .*git checkout"):
        ensure_data(params, "dln", data)
    manifest_path(data).write_text('{"model": "dln", "arrays": []}')
    with pytest.raises(DataError, match=r"dln\.json: not a data manifest \(no `arrays` mapping\).*git checkout"):
        ensure_data(params, "dln", data)


def test_data_without_a_manifest_is_read_as_given(tmp_path):
    params = dln_params(tmp_path)
    data = tmp_path / "dln.npz"
    ensure_data(params, "dln", data)  # no manifest: nothing to rebuild or check (a test's or a hand-made file)
    assert not data.exists()


def test_absent_checkpoints_recorded_by_a_dvc_file_stop_the_step_in_one_line(tmp_path):
    ckpt = tmp_path / "checkpoints" / "dln-bn-lr1e-06"
    require_present(ckpt, "re-train the cell")  # neither there nor recorded: the step says what it lacks itself
    (tmp_path / "checkpoints").mkdir()
    Path(f"{ckpt}.dvc").write_text("outs: []\n")
    with pytest.raises(DataError, match=r"dln-bn-lr1e-06: not in the workspace .*dln-bn-lr1e-06\.dvc records it: "
                                        r"restore it with `dvc pull .*dln-bn-lr1e-06`, or re-train the cell"):
        require_present(ckpt, "re-train the cell")
    ckpt.mkdir()
    require_present(ckpt, "re-train the cell")


def _dvc_project(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                ["git", "config", "user.name", "t"], [PY, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def _dvc_md5_dir(folder: Path) -> str:
    """DVC's hash of a folder, computed here: the md5 of its sorted JSON listing of (relpath, md5) entries."""
    entries = sorted(({"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(folder).as_posix()}
                      for p in folder.rglob("*") if p.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_a_step_run_by_dvc_records_its_large_outputs_and_a_hand_edit_fails_the_pr_check(tmp_path):
    root = tmp_path / "proj"
    _dvc_project(root)
    ckpt = root / "results" / "checkpoints" / "cell"
    (ckpt / "s0").mkdir(parents=True)
    (ckpt / "s0" / "step0.pt").write_bytes(b"weights")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        track_with_dvc([Path("results/checkpoints/cell")])
    finally:
        os.chdir(cwd)
    record = yaml.safe_load((root / "results" / "checkpoints" / "cell.dvc").read_text())["outs"][0]
    assert record["path"] == "cell" and record["md5"] == _dvc_md5_dir(ckpt)
    # the PR check looks at the .dvc files too (plain `dvc status` does not): green as committed, red once edited
    (root / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo 1 > o.txt\n    outs:\n      - o.txt:\n"
                                   "          cache: false\n")
    subprocess.run([PY, "-m", "dvc", "repro", "-q"], cwd=root, check=True, capture_output=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "r"], cwd=root, check=True)
    assert check(root).ok
    (ckpt / "s0" / "step0.pt").write_bytes(b"edited")
    v = check(root)
    assert v.stale == {"results/checkpoints/cell.dvc": ["changed outs: results/checkpoints/cell modified"]}, v


def test_a_large_artefact_absent_from_a_clone_is_expected_and_an_altered_one_is_not():
    status = {"results/checkpoints/a.dvc": [{"changed outs": {"results/checkpoints/a": "not in cache"}}],
              "results/probes_full/a.dvc": [{"changed outs": {"results/probes_full/a": "modified"}}]}
    v = judge(status, ["train@a"], lambda p: True)
    assert v.absent == ["results/checkpoints/a"] and v.not_run == []
    assert v.stale == {"results/probes_full/a.dvc": ["changed outs: results/probes_full/a modified"]}


def test_track_with_dvc_outside_a_dvc_project_names_the_folder(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"not a DVC project"):
        track_with_dvc([tmp_path / "c"], root=tmp_path)


def test_only_a_step_dvc_runs_records_its_outputs_with_dvc():
    from bnflow.cli import _expand_dvc_stage, build_parser

    by_dvc = build_parser().parse_args(_expand_dvc_stage(
        ["prepare", "--params", str(ROOT / "params.yaml"), "--dvc-stage", "prepare@dln", "--force"]))
    by_hand = build_parser().parse_args(["prepare", "--params", "params.yaml", "--model", "dln", "--output", "d.npz"])
    assert by_dvc.track_with_dvc and not by_hand.track_with_dvc
