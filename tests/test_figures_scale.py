"""Tests for bnflow.figures.scales and the per-scale registry: every paper VGG figure drawn from the reduced-scale VGG
(PROTOCOL §10, `vgg_cpu`) says so in its titles and caption with params' arch, width and steps; with both scales
present each is its own figure and neither draws the other's runs; with neither, the figures wait.

Synthetic runs come from tests/test_figures.py's helpers, relabelled to the model family under test.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from bnflow.config import from_dict  # noqa: E402
from bnflow.figures import FIGURES, render_figures, style  # noqa: E402
from bnflow.figures.common import Drawn, Skip  # noqa: E402
from bnflow.figures.data import FigureData  # noqa: E402
from bnflow.figures.scales import describe_scales, scaled_name  # noqa: E402
from bnflow.figures.select import PAPER_DEPTH, resolve_layers  # noqa: E402
from test_figures import _write_runs, grid_frame, metrics_only, synthetic  # noqa: E402

GPU = "not run yet (needs a GPU: workflow/paper-vgg.yaml)"
PHRASE = "reduced-scale VGG (VGG-11 ×0.5, 300 steps; PROTOCOL §10)"  # what SCALED's train.vgg_cpu reads as
SCALED = {"arch": "vgg11", "width_mult": 0.5, "steps": 300, "checkpoint_steps": [0, 100, 300]}
# The paper's VGG figures; each gets a reduced-scale twin named by scales.scaled_name
PAPER_VGG_FIGURES = ("fig01_accuracy", "fig01c_activations", "fig02_noisy_bn", "fig03a_ics_vgg", "fig04_landscape_vgg",
                     "fig05_lp_training", "fig06_lp_activations", "fig08a_moment_change", "fig08b_moment_drift",
                     "fig11a_grad_eta_vgg", "fig12_lp_vgg")
VARIANTS = ("standard", "bn", "noisy_bn", "l1")  # every VGG figure draws (l1: the ℓp ones)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def relabel(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    """The VGG rows of a synthetic frame as runs of another VGG family (model and cell ids renamed)."""
    out = frame[frame.model == "vgg"].copy()
    out["model"] = model
    out["cell"] = [f"{model}-{v}-lr{lr:g}" for v, lr in zip(out.variant, out.lr, strict=True)]
    return out


def scale_data(models: tuple[str, ...], scales: dict[str, str] | None = None, grid=None) -> FigureData:
    """Synthetic runs of these VGG families (vgg: the paper's 13 layers; vgg_cpu: VGG-11's 8, recorded at params'
    layers) and of the DLN, as FigureData. The two families' numbers differ (other generator draws)."""
    kw = {"variants": VARIANTS, "vgg_lrs": (0.1,), "checkpoint_steps": (0, 40, 100)}
    parts = {"vgg": synthetic(**kw)}
    parts["vgg_cpu"] = synthetic(**kw, vgg_ics=(3, 6), vgg_act=(1, 2, 6, 7, 8), vgg_depth=8, dln_lrs=(1e-7,))
    for name in ("metrics", "landscape"):  # make the reduced scale's numbers its own
        parts["vgg_cpu"].dense[name]["loss"] *= 3.0
    dln = parts["vgg"]
    dense = {k: pd.concat([*(relabel(parts[m].dense[k], m) for m in models), v[v.model == "dln"]], ignore_index=True)
             for k, v in dln.dense.items()}
    checkpoint = {k: pd.concat([relabel(parts[m].checkpoint[k], m) for m in models], ignore_index=True)
                  for k in dln.checkpoint} if models else {}
    runs = pd.concat([*(relabel(parts[m].runs, m) for m in models), dln.runs[dln.runs.model == "dln"]],
                     ignore_index=True)
    sources = {m: "CIFAR-10 (local archive)" for m in models} | {"dln": "synthetic regression y = Ax"}
    extra = {} if grid is None else {"grid": grid}
    return FigureData(dense=dense, checkpoint=checkpoint, runs=runs, sources=sources,
                      depths={"vgg": 13, "vgg_cpu": 8, "dln": 25}, scales={"vgg_cpu": PHRASE} if scales is None
                      else scales, **extra)


def specs(model: str) -> list:
    return [s for s in FIGURES if s.model == model]


def titles_drawn(fig) -> list[str]:
    """The figure titles a figure shows above its panels (style.add_title: its key's first title line, or a
    suptitle); not a key's own title such as Fig 11's "training time"."""
    keys = [leg.get_title().get_text().split("\n")[0] for leg in fig.legends]
    return [t for t in (*keys, fig.get_suptitle()) if t.startswith("Fig ")]


def look(out: Drawn) -> list:
    """What a figure draws: per panel its title and the data of every line and filled band; and the caption."""
    panels = []
    for ax in out.fig.axes:
        lines = [np.asarray(ln.get_ydata(), dtype=float).round(12).tolist() for ln in ax.get_lines()]
        bands = [np.round(p.vertices, 12).tolist() for c in ax.collections for p in c.get_paths()]
        panels.append((ax.get_title(), lines, bands))
    return [panels, out.caption]


# --------------------------------------------------------------------------------------------- scale and layers
def test_scale_phrase_reads_arch_width_and_steps_from_params(raw_params):
    raw_params["train"]["vgg_cpu"].update(arch="vgg16", width_mult=0.125, steps=3000, checkpoint_steps=[0, 3000])
    raw_params["summarize"]["auc_steps"] = 3000
    assert describe_scales(from_dict(raw_params)) == {
        "vgg_cpu": "reduced-scale VGG (VGG-16 ×0.125, 3,000 steps; PROTOCOL §10)"}
    assert scaled_name("fig04_landscape_vgg", "vgg_cpu") == "fig04_landscape_vgg_cpu"
    assert scaled_name("fig01_accuracy", "vgg_cpu") == "fig01_accuracy_vgg_cpu"
    assert scaled_name("fig01_accuracy", "vgg") == "fig01_accuracy"


def test_paper_layers_map_onto_the_reduced_scales_probe_layers(raw_params):
    """PROTOCOL §10 / params' comment: paper layer #k of 13 -> round(k x 8 / 13) of VGG-11, and the layers params
    records for vgg_cpu are exactly those the figures pick."""
    params = from_dict(raw_params)
    depth, probes = params.train.n_layers("vgg_cpu"), params.train.probes.vgg_cpu
    assert depth == 8
    ics = resolve_layers((5, 10), probes.ics_layers, depth, PAPER_DEPTH["vgg"])  # Fig 3a: 3.1 and 6.2 of 8
    assert ics == [(3, (5,)), (6, (10,))]
    act = probes.activation_layers
    assert resolve_layers((3, 11), act, depth, 13) == [(2, (3,)), (7, (11,))]  # Fig 1c: 1.8, 6.8
    # Figs 2, 8: the paper's #2 is 1.2 of 8, so VGG-11's #1, although a layer numbered 2 was recorded
    assert resolve_layers((2, 9, 13), act, depth, 13) == [(1, (2,)), (6, (9,)), (8, (13,))]
    assert resolve_layers((11,), act, depth, 13) == [(7, (11,))]  # Fig 6
    every = resolve_layers((2, 3, 9, 11, 13), act, depth, 13)  # the paper's activation layers, one each
    assert [layer for layer, _ in every] == sorted(act) and all(len(p) == 1 for _, p in every)
    assert [round(k * 8 / 13) for k in (5, 10)] == list(probes.ics_layers)


# ------------------------------------------------------------------------------------------------ the registry
def test_every_paper_vgg_figure_has_a_reduced_scale_twin_and_keeps_its_name():
    names = [s.name for s in FIGURES]
    assert len(set(names)) == len(names)
    assert [s.name for s in specs("vgg")] == list(PAPER_VGG_FIGURES)
    assert [s.name for s in specs("vgg_cpu")] == [
        "fig01_accuracy_vgg_cpu", "fig01c_activations_vgg_cpu", "fig02_noisy_bn_vgg_cpu", "fig03a_ics_vgg_cpu",
        "fig04_landscape_vgg_cpu", "fig05_lp_training_vgg_cpu", "fig06_lp_activations_vgg_cpu",
        "fig08a_moment_change_vgg_cpu", "fig08b_moment_drift_vgg_cpu", "fig11a_grad_eta_vgg_cpu", "fig12_lp_vgg_cpu"]
    for paper, reduced in zip(specs("vgg"), specs("vgg_cpu"), strict=True):
        assert names.index(reduced.name) == names.index(paper.name) + 1  # the twin right after the paper's figure
        assert reduced.figure is paper.figure and reduced.paper == paper.paper  # one function, another model
        assert reduced.title == f"{paper.title} — reduced-scale VGG (PROTOCOL §10)"
        assert reduced.need.models == tuple("vgg_cpu" if m == "vgg" else m for m in paper.need.models)
        assert "reduced-scale VGG" in reduced.about and "reduced-scale" not in paper.about


def test_the_title_sits_in_the_top_key_or_is_a_suptitle():
    """Constrained layout stacks a key "outside upper" and a suptitle on top of each other, so a figure with a
    figure-level key carries the title in it (above the key's own title), and one without gets a suptitle."""
    with_key, ax = plt.subplots(layout="constrained")
    ax.plot([0, 1], label="a")
    with_key.legend(loc="outside upper center", title="training time")
    style.add_title(with_key, "Fig 9, a scale")
    assert with_key.legends[0].get_title().get_text() == "Fig 9, a scale\ntraining time"
    assert with_key.get_suptitle() == ""
    bare, _ = plt.subplots(layout="constrained")
    style.add_title(bare, "Fig 9, a scale")
    assert bare.get_suptitle() == "Fig 9, a scale" and titles_drawn(bare) == ["Fig 9, a scale"]


def test_reduced_scale_figures_name_their_scale_in_titles_and_caption():
    data = scale_data(("vgg_cpu",))
    for spec in specs("vgg_cpu"):
        out = spec.draw(data)
        assert isinstance(out, Drawn), (spec.name, out)
        assert out.title.endswith(f" — {PHRASE}") and out.title.count("reduced-scale") == 1, out.title
        assert titles_drawn(out.fig) == [f"{spec.paper}, {PHRASE}"]
        assert PHRASE[0].upper() + PHRASE[1:] in out.caption, spec.name  # the caption's model phrase
        plt.close(out.fig)
    # the extras draw a block per model: the reduced scale's block names its scale, and so does the heading
    extra = next(s for s in FIGURES if s.name == "figx1_lr_sensitivity").draw(data)
    assert extra.title == f"final accuracy and loss against the learning rate — with the {PHRASE}"
    assert [ax.get_title() for ax in extra.fig.axes][0].startswith("reduced-scale VGG: final test accuracy")
    # the paper-scale figures wait for a GPU; Fig 5 draws its DLN panel and says the VGG one waits
    for spec in specs("vgg"):
        out = spec.draw(data)
        if spec.name == "fig05_lp_training":
            assert len(out.fig.axes) == 1 and out.fig.axes[0].get_title().startswith("(a) Deep linear network")
            assert out.caption.endswith(f"VGG panel: {GPU}.") and not titles_drawn(out.fig)
        else:
            assert isinstance(out, Skip) and out.reason == GPU, spec.name


def test_both_scales_are_separate_figures_and_neither_draws_the_others_runs():
    both, paper, reduced = (scale_data(m) for m in (("vgg", "vgg_cpu"), ("vgg",), ("vgg_cpu",)))
    for spec in (*specs("vgg"), *specs("vgg_cpu")):
        alone = paper if spec.model == "vgg" else reduced
        a, b = spec.draw(both), spec.draw(alone)
        assert isinstance(a, Drawn) and isinstance(b, Drawn), spec.name
        assert look(a) == look(b), spec.name  # the other scale's runs change nothing: no panel mixes the two
        assert titles_drawn(a.fig) == ([] if spec.model == "vgg" else [f"{spec.paper}, {PHRASE}"])
        assert ("reduced-scale" in a.caption.lower()) == (spec.model == "vgg_cpu"), spec.name
        plt.close("all")
    # and they do draw different runs: the reduced scale's losses are 3x the paper's
    fig4 = {s.model: s.draw(both) for s in FIGURES if s.paper == "Fig 4a–c"}
    paper_loss, reduced_loss = (look(fig4[m])[0][0][1] for m in ("vgg", "vgg_cpu"))
    assert paper_loss != reduced_loss


def test_neither_scale_present_waits_for_the_cells_or_a_gpu():
    cells = {"vgg_cpu-standard-lr0.1": False, "vgg_cpu-bn-lr0.1": False, "vgg_cpu-bn-lr0.5": False,
             "vgg_cpu-noisy_bn-lr0.1": False, "dln-bn-lr1e-06": True}
    data = scale_data((), grid=grid_frame(cells))
    lp = {"fig05_lp_training_vgg_cpu", "fig06_lp_activations_vgg_cpu", "fig12_lp_vgg_cpu"}
    for spec in specs("vgg_cpu"):
        out = spec.draw(data)
        assert isinstance(out, Skip), spec.name
        if spec.name in lp:  # no ℓp cell at this scale: these will not be drawn when the others run
            assert out.reason == "no vgg_cpu l1, l2, linf cells in the grid (train.grid): not run at this scale"
            assert data.waiting(spec.need) == [], spec.name
        else:
            assert out.reason == "not run yet" and data.waiting(spec.need), spec.name
    fig4 = next(s for s in specs("vgg_cpu") if s.paper == "Fig 4a–c")
    assert data.waiting(fig4.need) == ["vgg_cpu-bn-lr0.1", "vgg_cpu-standard-lr0.1"]
    fig2 = next(s for s in specs("vgg_cpu") if s.paper == "Fig 2")
    assert data.waiting(fig2.need) == ["vgg_cpu-bn-lr0.1", "vgg_cpu-noisy_bn-lr0.1", "vgg_cpu-standard-lr0.1"]
    for spec in specs("vgg"):
        if spec.name != "fig05_lp_training":  # Fig 5 still draws the DLN
            out = spec.draw(data)
            assert isinstance(out, Skip) and out.reason == GPU and data.waiting(spec.need) == [], spec.name
    # with workflow/paper-vgg.yaml's cells in the grid, the paper-scale figures name the cells they wait for
    gpu_grid = scale_data((), grid=grid_frame(cells | {"vgg-standard-lr0.1": False, "vgg-bn-lr0.1": False}))
    paper4 = next(s for s in specs("vgg") if s.paper == "Fig 4a–c")
    assert paper4.draw(gpu_grid).reason == GPU and gpu_grid.waiting(paper4.need) == ["vgg-bn-lr0.1",
                                                                                     "vgg-standard-lr0.1"]
    # a grid without reduced-scale cells (e.g. the quick run's) does not say they are coming
    assert fig4.draw(scale_data((), grid=grid_frame({"dln-bn-lr1e-06": True}))).reason == \
        "no vgg_cpu cells in the grid (train.grid)"


def test_figures_step_writes_both_scales_and_report_names_the_reduced_one(tmp_path, quick_raw):
    quick_raw["figures"]["dpi"] = 40
    quick_raw["train"]["seeds"]["n"] = 3
    quick_raw["train"]["vgg_cpu"].update(SCALED)
    quick_raw["summarize"]["auc_steps"] = 100
    for model in ("vgg", "vgg_cpu"):
        quick_raw["train"]["probes"][model]["every"] = 0  # dense probes off: the training figures only
    cells = {f"{m}-{v}-lr{lr}": {"model": m, "variant": v, "lr": lr}
             for m in ("vgg", "vgg_cpu") for v in ("standard", "bn") for lr in (0.1, 0.5)}  # runs: lr 0.1 only
    quick_raw["train"]["grid"] = {k: v for k, v in cells.items() if not k.startswith("vgg-")}
    params = from_dict(quick_raw)
    data = metrics_only(scale_data(("vgg", "vgg_cpu")))
    _write_runs(tmp_path / "runs", data, ["vgg_cpu-standard-lr0.1", "vgg_cpu-bn-lr0.1"])
    render_figures(params, tmp_path / "runs", tmp_path / "cpu")
    files = sorted(p.name for p in (tmp_path / "cpu").glob("*.png"))
    assert files == ["fig01_accuracy_vgg_cpu.png", "figx1_lr_sensitivity.png"]
    report = (tmp_path / "cpu" / "REPORT.md").read_text()
    title = f"Fig 1a–b: training and test accuracy, standard vs BatchNorm — {PHRASE}"
    assert f"### {title}" in report and f"![{title}](fig01_accuracy_vgg_cpu.png)" in report
    assert "Fig 1a–b. Reduced-scale VGG (VGG-11 ×0.5, 300 steps; PROTOCOL §10), 8 conv layers, SGD, on" in report
    assert "(this figure waits for them): vgg_cpu-bn-lr0.5, vgg_cpu-standard-lr0.5." in report  # Fig 1's lr 0.5
    assert f"(`fig01_accuracy`): {GPU}." in report and f"(`fig04_landscape_vgg`): {GPU}." in report
    assert "(`fig04_landscape_vgg_cpu`): no vgg_cpu landscape probes" in report
    png = Image.open(tmp_path / "cpu" / "fig01_accuracy_vgg_cpu.png")
    assert png.size[0] > png.size[1] > 100
    # a GPU user adds the paper-scale cells: two figures, each from its own scale
    quick_raw["train"]["grid"] = cells
    params = from_dict(quick_raw)
    _write_runs(tmp_path / "runs", data, ["vgg-standard-lr0.1", "vgg-bn-lr0.1"])
    render_figures(params, tmp_path / "runs", tmp_path / "both")
    report = (tmp_path / "both" / "REPORT.md").read_text()
    assert {"fig01_accuracy.png", "fig01_accuracy_vgg_cpu.png"} <= {p.name for p in (tmp_path / "both").iterdir()}
    assert "### Fig 1a–b: training and test accuracy, standard vs BatchNorm\n" in report
    assert f"### {title}" in report and GPU not in report
