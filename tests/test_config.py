"""params.yaml loads into frozen typed objects; every bad value stops the run naming its key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from bnflow.config import from_dict, load_params, merge
from bnflow.schema import json_schema
from bnflow.errors import ConfigError
from conftest import ROOT


def test_committed_defaults_are_the_paper_protocol():
    p = load_params(ROOT / "params.yaml")
    v = p.train.vgg
    assert (v.arch, v.steps, v.batch_size, v.momentum, v.weight_decay) == ("vgg16", 15000, 128, 0.0, 0.0)
    assert (p.train.dln.depth, p.train.dln.dim, p.train.dln.n_samples, p.train.dln.steps) == (25, 10, 1000, 10000)
    assert (p.train.noise.n_mu, p.train.noise.n_sigma, p.train.noise.r_mu, p.train.noise.r_sigma) == (0.5, 1.25, 0.1, 0.1)
    cells = {(c.model, c.variant, c.lr) for c in p.train.grid.values()}
    expected = {("vgg", v, lr) for v in ("standard", "bn") for lr in (0.1, 0.5, 0.01)}
    expected |= {("vgg", v, 0.1) for v in ("noisy_bn", "noisy_standard", "l1", "l2", "linf")}
    expected |= {("dln", v, 1e-6) for v in ("standard", "bn", "l1", "l2", "linf")}
    expected |= {("dln", v, 1e-7) for v in ("standard", "bn")}
    assert cells == expected
    assert p.train.seeds.n == 5


def test_params_are_frozen():
    p = load_params(ROOT / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.train.vgg.steps = 3
    with pytest.raises(TypeError):
        p.train.grid["x"] = None


@pytest.mark.parametrize("mutate, key, words", [
    (lambda r: r.update(extra=1), "extra", "unknown key"),
    (lambda r: r["train"]["vgg"].update(stepz=1), "train.vgg.stepz", "unknown key"),
    (lambda r: r["train"]["vgg"].pop("steps"), "train.vgg.steps", "missing key"),
    (lambda r: r["train"]["vgg"].update(steps="many"), "train.vgg.steps", "expected an integer"),
    (lambda r: r["train"]["vgg"].update(steps=True), "train.vgg.steps", "expected an integer"),
    (lambda r: r["train"]["vgg"].update(steps=0), "train.vgg.steps", ">= 1"),
    (lambda r: r["train"]["vgg"].update(width_mult="1e-1"), "train.vgg.width_mult", "write 1.0e-6"),
    (lambda r: r["train"]["grid"]["vgg-bn-lr0.1"].update(lr=-0.1), "train.grid.vgg-bn-lr0.1.lr", "> 0"),
    (lambda r: r["train"]["grid"].clear(), "train.grid", "must not be empty"),
    (lambda r: r["train"]["grid"]["vgg-bn-lr0.1"].update(variant="gn"), "train.grid.vgg-bn-lr0.1.variant",
     "not one of"),
    (lambda r: r["train"]["grid"]["vgg-bn-lr0.1"].update(model="resnet"), "train.grid.vgg-bn-lr0.1.model",
     "not one of"),
    (lambda r: r["train"]["grid"].update({"vgg-bn-lr0.2": {"model": "vgg", "variant": "bn", "lr": 0.3}}),
     "train.grid.vgg-bn-lr0.2", "vgg-bn-lr0.3"),
    (lambda r: r["train"]["noise"].update(n_sigma=0.5), "train.noise.n_sigma", ">= 1"),
    (lambda r: r["train"]["norm"].update(eps=0), "train.norm.eps", "> 0"),
    (lambda r: r["train"]["seeds"].update(n=0), "train.seeds.n", ">= 1"),
    (lambda r: r["train"]["vgg"].update(checkpoint_steps=[0, 20000]), "train.vgg.checkpoint_steps", "outside"),
    (lambda r: r["train"]["vgg"].update(checkpoint_steps=[100, 0]), "train.vgg.checkpoint_steps", "increasing"),
    (lambda r: r["train"]["vgg"].update(checkpoint_steps=[]), "train.vgg.checkpoint_steps", "must not be empty"),
    (lambda r: r["train"]["vgg"].update(checkpoint_steps=5), "train.vgg.checkpoint_steps", "expected a list"),
    (lambda r: r["train"]["vgg"].update(precision="fp16"), "train.vgg.precision", "not one of"),
    (lambda r: r["train"]["execution"].update(device="tpu"), "train.execution.device", "not auto"),
    (lambda r: r["prepare"].update(source="web"), "prepare.source", "not one of"),
    (lambda r: r["prepare"].update(synthetic=[1]), "prepare.synthetic", "expected a mapping"),
    (lambda r: r["figures"].update(band="iqr"), "figures.band", "not one of"),
])
def test_validation_errors_name_the_key(raw_params, mutate, key, words):
    mutate(raw_params)
    with pytest.raises(ConfigError) as e:
        from_dict(raw_params)
    assert str(e.value).startswith(key), str(e.value)
    assert words in str(e.value)


def test_overlay_merges_keys_but_replaces_the_grid(quick_raw):
    p = from_dict(quick_raw)
    assert p.out_dir == "results/quick"
    assert p.train.vgg.batch_size == 32 and p.train.vgg.momentum == 0.0  # overridden / inherited
    assert set(p.train.grid) == {"vgg-standard-lr0.1", "vgg-bn-lr0.1", "dln-standard-lr1e-06", "dln-bn-lr1e-06"}
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_unknown_cell_lists_the_known_ones():
    p = load_params(ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="known cells: dln-bn-lr1e-06"):
        p.cell("vgg-gn-lr0.1")


def test_schema_file_is_generated_from_the_dataclasses():
    committed = json.loads((ROOT / "workflow" / "schemas" / "params.schema.json").read_text())
    assert committed == json_schema(), "regenerate workflow/schemas/params.schema.json from bnflow.schema.json_schema()"
    grid = committed["properties"]["train"]["properties"]["grid"]
    assert grid["additionalProperties"]["properties"]["variant"]["enum"][:2] == ["standard", "bn"]


def test_cli_rejects_bad_params_before_any_work(tmp_path, raw_params):
    raw_params["train"]["grid"]["vgg-bn-lr0.1"]["lr"] = -1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw_params))
    out = tmp_path / "data.npz"
    proc = subprocess.run([sys.executable, "-m", "bnflow", "prepare", "--params", str(bad), "--output", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "train.grid.vgg-bn-lr0.1.lr: must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("step", ["prepare", "train", "figures"])
def test_every_step_has_help(step):
    proc = subprocess.run([sys.executable, "-m", "bnflow", step, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "--params" in proc.stdout
