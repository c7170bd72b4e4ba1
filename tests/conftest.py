"""Shared fixtures: the committed params, small param overlays, and the tree layout."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from bnflow.config import Params, fit_summary_windows, from_dict, merge, read_yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"

# CI=true makes every bnflow step quiet (warnings and errors only, bnflow.cli.quiet_requested), and many tests read
# the steps' INFO lines ("waiting for ...", "resuming at step ..."): under a CI that sets it, those tests failed or
# waited for a line that never came. The tests run the steps as a user's terminal would; the tests of the quiet
# mode set CI themselves (test_train.py).
os.environ.pop("CI", None)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def raw_params() -> dict:
    """The committed params.yaml as plain data (a fresh copy per test)."""
    return copy.deepcopy(read_yaml(ROOT / "params.yaml"))


@pytest.fixture
def quick_raw() -> dict:
    """params.yaml with the quick-run overlay applied."""
    return merge(read_yaml(ROOT / "params.yaml"), read_yaml(ROOT / "workflow" / "quick.yaml"))


def tiny_params(tmp_path: Path, **train_overrides) -> Params:
    """Quick-run params shrunk further for unit tests, with the paper grid, writing under tmp_path."""
    raw = merge(read_yaml(ROOT / "params.yaml"), read_yaml(ROOT / "workflow" / "quick.yaml"))
    raw["out_dir"] = str(tmp_path / "out")
    raw["prepare"]["synthetic"].update(n_train=256, n_test=64)
    raw["train"] = merge(raw["train"], {
        "seeds": {"n": 1},
        "vgg": {"steps": 30, "batch_size": 16, "log_every": 5, "eval_every": 10, "eval_batch_size": 64,
                "checkpoint_steps": [0, 10, 30]},
        "dln": {"depth": 4, "steps": 40, "log_every": 5, "checkpoint_steps": [0, 20, 40]},
        "execution": {"parallel_runs": 1, "sync_every": 7, "resume_every_s": 0},
        # activations at every probe: the unit tests' runs have few probes
        "probes": {"vgg": {"activation_every": 0},
                   "dln": {"ics_layers": [2, 3], "activation_layers": [1, 4], "activation_every": 0}},
    })
    raw["probe"] = merge(raw["probe"], {"dln": {"ics_layers": [2, 3], "activation_layers": [1, 4]}})
    raw["train"] = merge(raw["train"], train_overrides)
    # every variant of the paper grid: params.yaml's cells and the paper-scale VGG's (workflow/paper-vgg.yaml lists both)
    raw["train"]["grid"] = read_yaml(ROOT / "workflow" / "paper-vgg.yaml")["train"]["grid"]
    return from_dict(fit_summary_windows(raw))


def data_for(cell: str, image_data):
    """The prepared data a cell reads in these tests: the image dataset for image models; None for the DLN, whose
    task then draws the same regression problem its prepared file would hold (bnflow.data.dln)."""
    return None if cell.startswith("dln-") else image_data


def copy_params(dst_dir: Path) -> Path:
    """params.yaml copied into a scratch workspace, its archive path made absolute (a relative one points beside
    the project, where a workspace under /tmp has no shared/ folder)."""
    text = (ROOT / "params.yaml").read_text()
    rel = read_yaml(ROOT / "params.yaml")["prepare"]["archive"]
    dst = dst_dir / "params.yaml"
    dst.write_text(text.replace(f"archive: {rel}", f"archive: {(ROOT / rel).resolve()}", 1))
    return dst
