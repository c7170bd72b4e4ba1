"""params.yaml loads into frozen typed objects; every bad value stops the run naming its key."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
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
    dln = {("dln", v, 1e-6) for v in ("standard", "bn", "l1", "l2", "linf")} | {("dln", v, 1e-7) for v in ("standard", "bn")}
    core = {("vgg_cpu", v, lr) for v in ("standard", "bn") for lr in (0.1, 0.5)}
    core |= {("vgg_cpu", v, 0.1) for v in ("noisy_bn", "noisy_standard")}
    reduced = core | {("vgg_cpu", v, 0.01) for v in ("standard", "bn")}  # committed after the core grid
    # the committed grid is what the committed results hold: the DLN and the reduced-scale VGG's committed cells
    # (results/README.md lists those still to run; they are in workflow/paper-vgg.yaml's grid)
    cells = {(c.model, c.variant, c.lr) for c in p.train.grid.values()}
    assert cells - reduced == dln and reduced <= cells
    # the DLN: seeds 0-4 for the v2 claims, 5-19 registry v3's fresh seeds (STATS.md), all committed
    assert dict(p.train.seeds.n) == {"vgg": 5, "vgg_cpu": 5, "dln": 20, "resnet": 5}
    # the paper-scale VGG grid (GPU) is an overlay that keeps every committed cell and adds the paper's VGG cells
    gpu = load_params(ROOT / "params.yaml", ROOT / "workflow" / "paper-vgg.yaml")
    paper = {("vgg", v, lr) for v in ("standard", "bn") for lr in (0.1, 0.5, 0.01)}
    paper |= {("vgg", v, 0.1) for v in ("noisy_bn", "noisy_standard", "l1", "l2", "linf")}
    assert {(c.model, c.variant, c.lr) for c in gpu.train.grid.values()} == dln | reduced | paper
    assert set(gpu.train.grid) >= set(p.train.grid) and gpu.lrscan.models == ("vgg", "dln")


def test_reduced_scale_vgg_is_the_vgg_protocol_at_a_cpu_scale():
    """PROTOCOL §10: only the width and the step budget shrink; probe layers sit at the paper's positions."""
    p = load_params(ROOT / "params.yaml")
    v, c = p.train.vgg, p.train.vgg_cpu
    assert (c.arch, c.width_mult, c.steps) == ("vgg11", 0.125, 5000)
    same = ("batch_size", "momentum", "weight_decay", "precision")
    assert [getattr(c, k) for k in same] == [getattr(v, k) for k in same]
    depth, paper_depth = p.train.n_layers("vgg_cpu"), p.train.n_layers("vgg")
    mapped = [round(k * depth / paper_depth) for k in p.train.probes.vgg.ics_layers]
    assert list(p.train.probes.vgg_cpu.ics_layers) == mapped == list(p.probe.vgg_cpu.ics_layers)
    mapped = [max(1, round(k * depth / paper_depth)) for k in p.train.probes.vgg.activation_layers]
    assert list(p.train.probes.vgg_cpu.activation_layers) == mapped
    assert p.train.probes.vgg_cpu.eta_factors == p.train.probes.vgg.eta_factors
    assert p.train.probes.vgg_cpu.every == p.train.probes.vgg.every


def test_seed_counts_per_model_family(raw_params):
    raw = copy.deepcopy(raw_params)
    raw["train"]["seeds"]["n"] = 3  # an overlay's one int: every family
    assert dict(from_dict(raw).train.seeds.n) == dict.fromkeys(("vgg", "vgg_cpu", "dln", "resnet"), 3)
    p = from_dict(raw_params)
    assert p.train.seeds.indices("dln") == tuple(range(20)) and p.train.seeds.indices("vgg_cpu") == tuple(range(5))
    for n, message in [({"vgg": 5}, r"^train\.seeds\.n\.vgg_cpu: missing key"),
                       ({**raw_params["train"]["seeds"]["n"], "mlp": 2}, r"^train\.seeds\.n\.mlp: no model family"),
                       ({**raw_params["train"]["seeds"]["n"], "dln": 0}, r"^train\.seeds\.n\.dln: must be an int >= 1"),
                       ("five", r"^train\.seeds\.n: expected a count per model family")]:
        raw = copy.deepcopy(raw_params)
        raw["train"]["seeds"]["n"] = n
        with pytest.raises(ConfigError, match=message):
            from_dict(raw)


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
    (lambda r: r["train"]["grid"]["vgg_cpu-bn-lr0.1"].update(lr=-0.1), "train.grid.vgg_cpu-bn-lr0.1.lr", "> 0"),
    (lambda r: r["train"]["grid"].clear(), "train.grid", "must not be empty"),
    (lambda r: r["train"]["grid"]["vgg_cpu-bn-lr0.1"].update(variant="gn"), "train.grid.vgg_cpu-bn-lr0.1.variant",
     "not one of"),
    (lambda r: r["train"]["grid"]["vgg_cpu-bn-lr0.1"].update(model="mlp"), "train.grid.vgg_cpu-bn-lr0.1.model",
     "not one of"),
    (lambda r: r["train"]["grid"].update({"vgg-bn-lr0.2": {"model": "vgg", "variant": "bn", "lr": 0.3}}),
     "train.grid.vgg-bn-lr0.2", "vgg-bn-lr0.3"),
    (lambda r: r["train"]["noise"].update(n_sigma=0.5), "train.noise.n_sigma", ">= 1"),
    (lambda r: r["train"]["norm"].update(eps=0), "train.norm.eps", "> 0"),
    (lambda r: r["train"]["seeds"].update(n=0), "train.seeds.n.vgg", ">= 1"),
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
    variant = grid["additionalProperties"]["properties"]["variant"]
    assert variant["examples"][:2] == ["standard", "bn"] and re.fullmatch(variant["pattern"], "group_norm")


def test_cli_rejects_bad_params_before_any_work(tmp_path, raw_params):
    raw_params["train"]["grid"]["vgg_cpu-bn-lr0.1"]["lr"] = -1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw_params))
    out = tmp_path / "data.npz"
    proc = subprocess.run([sys.executable, "-m", "bnflow", "prepare", "--params", str(bad), "--model", "vgg",
                           "--output", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "train.grid.vgg_cpu-bn-lr0.1.lr: must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("step", ["prepare", "train", "figures"])
def test_every_step_has_help(step):
    proc = subprocess.run([sys.executable, "-m", "bnflow", step, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "--params" in proc.stdout


# ------------------------------------------------------------------------- issue 13.4, 13.7, 14.4: mistakes caught
def test_duplicate_keys_are_refused_naming_the_file_the_key_and_both_lines(tmp_path):
    """A second `train:` in an overlay silently replaced the first (YAML's last-wins) and ran the paper grid."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("out_dir: results/x\ntrain:\n  seeds: {n: 1}\nprobe:\n  n_units: 1\ntrain:\n  vgg: {steps: 3}\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}: duplicate key train \(lines 2 and 6\)"):
        load_params(ROOT / "params.yaml", overlay)
    overlay.write_text("train:\n  vgg:\n    steps: 3\n    log_every: 1\n    steps: 4\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}: duplicate key train\.vgg\.steps \(lines 3 and 5\)"):
        load_params(ROOT / "params.yaml", overlay)
    overlay.write_text("train:\n  grid:\n    a: {model: vgg, model: dln}\n")  # flow mappings too
    with pytest.raises(ConfigError, match=r"duplicate key train\.grid\.a\.model \(lines 3 and 3\)"):
        load_params(ROOT / "params.yaml", overlay)


def test_a_typo_key_gets_a_suggestion_and_the_file_it_came_from(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  vgg: {stepz: 3}\n")
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", overlay)
    assert str(e.value).startswith("train.vgg.stepz: unknown key; did you mean 'steps'? (valid keys: ")
    assert str(e.value).endswith(f"(set in {overlay})")
    # a bad value set in params.yaml and left alone by the overlay is params.yaml's
    base = tmp_path / "params.yaml"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["vgg"]["steps"] = 0
    base.write_text(yaml.safe_dump(raw))
    overlay.write_text("train:\n  vgg: {log_every: 5}\n")
    with pytest.raises(ConfigError, match=rf"^train\.vgg\.steps: must be >= 1, got 0 \(set in {base}\)$"):
        load_params(base, overlay)
    overlay.write_text("train:\n  vgg: {steps: -3}\n")  # now the overlay's
    with pytest.raises(ConfigError, match=rf"^train\.vgg\.steps: must be >= 1, got -3 \(set in {overlay}\)$"):
        load_params(base, overlay)


@pytest.mark.parametrize("key", ["out_dir", "prepare.archive", "prepare.download_dir"])
@pytest.mark.parametrize("value", ["/tmp/x;touch /tmp/PWNED;echo", "results/with space", "$(touch x)", "`id`",
                                   "-rf", "a|b", "a&b", "x\ny", "res>out", "it's", "*"])
def test_hostile_path_params_are_refused(raw_params, key, value):
    """13.1: out_dir is pasted into shell commands; `/tmp/x;touch /tmp/PWNED;echo` created the file."""
    section, _, name = key.rpartition(".")
    (raw_params[section] if section else raw_params)[name] = value
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .* is not a safe path"):
        from_dict(raw_params)


def test_safe_paths_are_accepted_and_out_dir_stays_inside(raw_params):
    for value in ("results", "results/quick", "/abs/path-1/x_y.z", "./out"):
        raw_params["out_dir"] = value
        assert from_dict(raw_params).out_dir == value
    raw_params["prepare"]["archive"] = "../shared/datasets/cifar10-jpeg.tar.gz"  # reading from outside is fine
    from_dict(raw_params)
    for value in ("../elsewhere", "results/../../x"):
        raw_params["out_dir"] = value
        with pytest.raises(ConfigError, match=r"^out_dir: .* has a '\.\.' component"):
            from_dict(raw_params)


def test_cross_field_mistakes_are_caught_before_any_job(raw_params, tmp_path, monkeypatch):
    """13.7: these failed late (after training, or 13 s into a job) or named no key."""
    raw = copy.deepcopy(raw_params)
    raw["probe"]["curvature"].update(eig_k=30, eig_iters=20)
    with pytest.raises(ConfigError, match=r"^probe\.curvature\.eig_k: 30 exceeds probe\.curvature\.eig_iters \(20\)"):
        from_dict(raw)
    raw = copy.deepcopy(raw_params)
    raw["lrscan"]["seeds"] = raw["train"]["seeds"]["n"]["dln"] + 1  # the DLN's prepared problems stop there
    with pytest.raises(ConfigError, match=r"^lrscan\.seeds: 21 exceeds train\.seeds\.n\.dln \(20\)"):
        from_dict(raw)
    raw = copy.deepcopy(raw_params)
    raw["prepare"]["source"] = "synthetic"
    raw["train"]["vgg"]["batch_size"] = raw["prepare"]["synthetic"]["n_train"] + 1
    with pytest.raises(ConfigError, match=r"^train\.vgg\.batch_size: 2001 exceeds the 2000 training images "
                                          r"\(prepare\.synthetic\.n_train\)"):
        from_dict(raw)
    raw["prepare"]["source"] = "torchvision"  # CIFAR-10: 50000 training images
    from_dict(raw)
    raw["train"]["vgg"]["batch_size"] = 50001
    with pytest.raises(ConfigError, match=r"^train\.vgg\.batch_size: 50001 exceeds the 50000 training images"):
        from_dict(raw)
    raw = copy.deepcopy(raw_params)
    raw["prepare"].update(source="archive", archive="no/such/cifar.tar.gz")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^prepare\.archive: {tmp_path}/no/such/cifar\.tar\.gz does not exist"):
        from_dict(raw)
    (tmp_path / "no" / "such").mkdir(parents=True)
    (tmp_path / "no" / "such" / "cifar.tar.gz").write_bytes(b"")
    from_dict(raw)


@pytest.mark.parametrize("key, value", [("momentum", 0.9), ("weight_decay", 5e-4)])
def test_dense_probes_need_plain_sgd(raw_params, key, value):
    """Issue 12 / PROTOCOL §5: the ICS update and the landscape assume plain SGD steps."""
    raw_params["train"]["vgg"][key] = value
    with pytest.raises(ConfigError, match=rf"^train\.vgg\.{key}: dense probes \(train\.probes\.vgg\.every = 100\) "
                                          rf"assume plain SGD, but train\.vgg\.{key} = {value:g}"):
        from_dict(raw_params)
    raw_params["train"]["probes"]["vgg"]["every"] = 0
    assert getattr(from_dict(raw_params).train.vgg, key) == value


def test_cli_errors_are_printed_once_and_logged(tmp_path, raw_params):
    raw_params["train"]["vgg"]["stepz"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw_params))
    log = tmp_path / "logs" / "prepare.log"
    proc = subprocess.run([sys.executable, "-m", "bnflow", "prepare", "--params", str(bad), "--model", "vgg",
                           "--output", str(tmp_path / "d.npz"), "--log", str(log)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("train.vgg.stepz: unknown key") == 1, proc.stderr
    assert proc.stderr.startswith("bnflow prepare: error: train.vgg.stepz: unknown key; did you mean 'steps'?")
    assert log.read_text().count("train.vgg.stepz: unknown key") == 1


# ------------------------------------------------------------------------- issue 26: plug-ins are code, contained
HOSTILE_PLUGINS = {
    "exit_at_import": ("import sys\nsys.exit(8)\n", "SystemExit: 8"),
    "interrupt_at_import": ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    "argv_at_import": ("import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', required=True)\n"
                       "p.parse_args()\n", "the following arguments are required: --lr"),
    "exit_in_trial": ("import sys, torch\nclass Norm(torch.nn.Module):\n    def __init__(self, c):\n"
                      "        super().__init__()\n    def forward(self, a):\n        sys.exit(3)\n", "SystemExit: 3"),
    "interrupt_when_built": ("import torch\nclass Norm(torch.nn.Module):\n    def __init__(self, c):\n"
                             "        raise KeyboardInterrupt\n", "cannot be built"),
    "eight_channels_only": ("import torch\nclass Norm(torch.nn.Module):\n    def __init__(self, c):\n"
                            "        super().__init__()\n        assert c == 8, f'{c} channels'\n"
                            "    def forward(self, a):\n        return a\n", "Norm(10) cannot be built"),
    "a_function": ("import torch\ndef Norm(c):\n    return torch.nn.Identity()\n", "is a function, not a class"),
}


def plugin_raw(tmp_path, monkeypatch, case: str) -> dict:
    """params.yaml with one DLN cell (10 channels) of a plug-in variant whose module is HOSTILE_PLUGINS[case]."""
    module = f"bnflow_test_{case}"
    (tmp_path / f"{module}.py").write_text(HOSTILE_PLUGINS[case][0])
    monkeypatch.syspath_prepend(str(tmp_path))
    return plugin_params(f"{module}:Norm")


def plugin_params(spec: str) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["plugins"] = {"mine": {"module": spec}}
    raw["train"]["grid"]["dln-mine-lr1e-06"] = {"model": "dln", "variant": "mine", "lr": 1e-6}
    return raw


@pytest.mark.parametrize("case", sorted(HOSTILE_PLUGINS))
def test_a_plugin_that_exits_interrupts_parses_argv_or_fails_at_the_models_width_is_a_params_error(
        tmp_path, monkeypatch, case):
    raw = plugin_raw(tmp_path, monkeypatch, case)
    argv = list(sys.argv)
    with pytest.raises(ConfigError) as e:
        from_dict(raw, check_files=False)
    assert str(e.value).startswith("train.plugins.mine.module: ") and HOSTILE_PLUGINS[case][1] in str(e.value)
    assert "\n" not in str(e.value) and sys.argv == argv


@pytest.mark.parametrize("spec, words", [("sys:exit", "standard library"), ("os:_exit", "standard library"),
                                         ("builtins:print", "standard library"),
                                         ("torch.nn:Identity", None), ("torch:manual_seed", "not a class")])
def test_standard_library_modules_and_non_classes_are_refused_before_they_are_called(spec, words):
    if words is None:
        from_dict(plugin_params(spec), check_files=False)  # a class of a third-party package is a plug-in
        return
    with pytest.raises(ConfigError, match=rf"^train.plugins.mine.module: .*{words}"):
        from_dict(plugin_params(spec), check_files=False)


def test_the_command_line_reports_sys_exit_as_a_plugin_in_one_line(tmp_path):
    """`module: sys:exit` made `snakemake -n` (and every step) exit 8 with no message."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"train": {"plugins": {"mine": {"module": "sys:exit"}}, "grid": {
        "dln-mine-lr1e-06": {"model": "dln", "variant": "mine", "lr": 1e-6}}}}))
    proc = subprocess.run([sys.executable, "-m", "bnflow", "stats", "--params", str(ROOT / "params.yaml"),
                           "--params", str(overlay), "--runs", str(tmp_path / "runs.csv"), "--output",
                           str(tmp_path / "stats")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "train.plugins.mine.module: 'sys' is a module of Python's standard library" in proc.stderr


def test_a_plugin_that_parses_the_command_line_at_import_sees_none_of_bnflows(tmp_path, monkeypatch):
    (tmp_path / "bnflow_test_argv_optional.py").write_text(
        "import argparse, torch\np = argparse.ArgumentParser()\np.add_argument('--lr')\nARGS = p.parse_args()\n"
        "class Norm(torch.nn.Module):\n    def forward(self, a):\n        return a\n"
        "    def __init__(self, c):\n        super().__init__()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["snakemake", "--cores", "1", "-n"])  # what it would have parsed
    from_dict(plugin_params("bnflow_test_argv_optional:Norm"), check_files=False)
    assert sys.argv == ["snakemake", "--cores", "1", "-n"]


# ------------------------------------------------------------- issue 26: values that would silently change results
@pytest.mark.parametrize("key, value, words", [
    # committed grid: DLN and reduced-scale VGG cells (vgg_cpu: 5000 steps logged every 10, 501 points)
    ("summarize.auc_steps", 5001, "exceeds train.vgg_cpu.steps = 5000, the step budget of the grid's vgg_cpu cells"),
    ("summarize.auc_steps", 100_000, "exceeds train.vgg_cpu.steps = 5000"),
    ("summarize.smooth_window", 502, "exceeds the 501 that each of the grid's vgg_cpu cells"),
    ("summarize.final_window", 502, "exceeds the 501 that each of the grid's vgg_cpu cells"),
    ("prepare.synthetic.n_train", 10**12, "1,000,000,000,000 images exceeds 200,000"),
    ("prepare.synthetic.n_test", 200_001, "200,001 images exceeds 200,000"),
])
def test_windows_beyond_a_run_of_the_grid_and_huge_synthetic_sets_are_refused_at_load(key, value, words):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    section, *rest = key.split(".")
    node = raw[section]
    for part in rest[:-1]:
        node = node[part]
    limit = {"summarize.auc_steps": 5000, "summarize.smooth_window": 501, "summarize.final_window": 501,
             "prepare.synthetic.n_train": 200_000, "prepare.synthetic.n_test": 200_000}[key]
    node[rest[-1]] = limit  # the reduced-scale VGG's whole run; the largest allowed set
    from_dict(raw, check_files=False)
    node[rest[-1]] = value
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .*{re.escape(words)}"):
        from_dict(raw, check_files=False)


def test_a_window_is_checked_against_each_family_of_the_grid_not_only_the_longest():
    """auc_steps 6000 fits the paper-scale VGG (15,000 steps) but would cover the reduced-scale runs (5,000) whole."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["summarize"]["auc_steps"] = 6000
    with pytest.raises(ConfigError, match=r"^summarize\.auc_steps: 6000 exceeds train\.vgg_cpu\.steps = 5000"):
        from_dict(raw, check_files=False)
    raw["train"]["grid"] = {k: c for k, c in raw["train"]["grid"].items() if c["model"] != "vgg_cpu"}
    raw["train"]["grid"]["vgg-bn-lr0.1"] = {"model": "vgg", "variant": "bn", "lr": 0.1}
    assert from_dict(raw, check_files=False).summarize.auc_steps == 6000  # no vgg_cpu run to cut
    raw["summarize"]["auc_steps"] = 15001  # beyond every classifier, whatever the grid
    with pytest.raises(ConfigError, match=r"exceeds train\.vgg\.steps = 15000"):
        from_dict(raw, check_files=False)
    raw["train"]["grid"] = {k: c for k, c in raw["train"]["grid"].items() if c["model"] == "dln"}
    with pytest.raises(ConfigError, match=r"exceeds every classifier's step budget \(the longest: train\.vgg\.steps"):
        from_dict(raw, check_files=False)
