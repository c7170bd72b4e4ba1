"""The pipeline's jobs: the params keys each step reads (its DVC stage's `params:`), and one Job per DAG node.

A Job names its step, its key (a cell id, a model family or ''), the outputs it writes and the params keys it reads;
the stamps (bnflow.dag.stamps) record those params per job, the plan (bnflow.dag.planning) builds the jobs of one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnflow.errors import ConfigError
from bnflow.vocab import CLASSIFIERS

LRSCAN_FILES = ("scan.csv", "thresholds.csv", "provenance.json", "summary.json")
# Topological rank of each step (outputs are dated in this order when adopted).
RANK = {"prepare": 0, "train": 1, "probe": 2, "lrscan": 2, "summarize": 3, "stats": 4, "figures": 5}


def data_path(out_dir: str, model: str) -> str:
    """The prepared data a model family reads: the images (classifiers) or the DLN's regression problems."""
    return f"{out_dir}/data/{model}.npz"


def manifest_path(data: str | Path) -> Path:
    """The manifest beside a prepared data file (`<model>.npz` -> `<model>.json`, bnflow.prepare): what DVC's stages
    depend on instead of the data, which git does not keep (bnflow.dag.artefacts)."""
    return Path(data).with_suffix(".json")


def param_keys(step: str, *, model: str | None = None) -> list[str]:
    """The params.yaml keys one job of `step` reads: exactly its DVC stage's `params:` (tests/test_dag.py checks)."""
    if step == "prepare":
        if model in CLASSIFIERS:  # the download folder is left out: it never changes the data
            return ["prepare.source", "prepare.archive", "prepare.synthetic"]
        return ["train.seeds.base", "train.seeds.n.dln", "train.dln.n_samples", "train.dln.dim"]
    if step == "train":
        return ["train.seeds.base", f"train.seeds.n.{model}", "train.norm", "train.noise", f"train.{model}",
                "train.probes", "train.plugins", "train.numerics"]
    if step == "probe":
        return ["probe", "train.seeds.base", f"train.seeds.n.{model}"]
    if step == "lrscan":
        return [f"lrscan.{model}", "lrscan.seeds", "lrscan.loss_fraction", f"train.{model}", "train.norm",
                "train.noise", "train.seeds.base"]
    if step == "summarize":
        return [step, "train.seeds", "train.grid"]
    if step == "figures":
        return [step, "train.seeds", "train.grid", "lrscan"]
    if step == "stats":
        return ["stats", "claims"]
    raise ValueError(f"unknown step {step!r}")


def lookup(raw: Mapping[str, Any], key: str) -> Any:
    """The value of a dotted key in the raw (merged) params mapping; a missing key is an error naming it."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{key}: missing in params (needed by the workflow)")
        node = node[part]
    return node


@dataclass(frozen=True)
class Job:
    """One job of the DAG: its step, its key (cell id, model or ''), the outputs it writes and the params it reads.

    `chain` names jobs whose params this job's stamp includes as well (a prepare step read through an ancient input).
    `inputs` are the other jobs' outputs its rule declares (not ancient): the file times Snakemake compares.
    """

    step: str
    key: str
    outputs: tuple[str, ...]
    keys: tuple[str, ...]
    chain: tuple[Job, ...] = ()
    inputs: tuple[str, ...] = ()

    @property
    def stage(self) -> str:
        """The DVC stage name (dvc.lock's key) of this job."""
        return f"{self.step}@{self.key}" if self.key else self.step

    def values(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """{key: value} of the params this job reads (its chain's too), from the raw merged params."""
        out = {k: lookup(raw, k) for k in self.keys}
        for up in self.chain:
            out |= {f"{up.stage}:{k}": v for k, v in up.values(raw).items()}
        return out
