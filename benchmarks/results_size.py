"""How many megabytes the committed results of the whole default grid take in git (issue 11's budget: 25 MB).

Measured where measurable, extrapolated where not:
- the DLN half: the git-tracked files of the committed DLN cells, measured as they are;
- the VGG half: bytes per row of every committed VGG table, measured on a finished VGG run at quick scale (the
  format does not depend on the scale), times the rows a paper-scale run writes (computed from params.yaml);
- figures, REPORT.md, stats and plots: measured on the committed results, plus the VGG figures at the size a
  paper-scale figure has (`--figure-mb`, measured by rendering a paper-scale figure).

    python benchmarks/results_size.py --quick results/quick [--results results] [--figure-mb 0.45]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnflow.config import load_params  # noqa: E402

MB = 1e6


def bytes_per_row(path: Path) -> tuple[float, int]:
    """(bytes per data row, header bytes) of a CSV; of a gzip-compressed one (a run's `.csv.gz` table), its
    compressed bytes spread over its rows (compressed, the header costs nothing apart)."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        rows = gzip.decompress(raw).count(b"\n") - 1
        return (len(raw) / rows, 0) if rows > 0 else (0.0, len(raw))
    lines = raw.splitlines(keepends=True)
    if len(lines) < 2:
        return 0.0, len(lines[0]) if lines else 0
    return sum(map(len, lines[1:])) / (len(lines) - 1), len(lines[0])


def vgg_rows(p, variant: str) -> dict[str, int]:
    """Rows each committed table of one paper-scale VGG run holds (dense tables in runs/, gzip-compressed; probe
    tables in probes/)."""
    v, dense, probe = p.train.vgg, p.train.probes, p.probe
    probes = v.steps // dense.vgg.every if dense.vgg.every else 0
    act_probes = v.steps // dense.vgg.activation_every if dense.vgg.activation_every else probes
    n_ckpt = len(v.checkpoint_steps)
    acts = len(dense.vgg.activation_layers)
    bn_layers = 13 if "bn" in variant else 0
    return {
        "runs/metrics.csv.gz": v.steps // v.log_every + 1 + v.steps // v.eval_every + 1,
        "runs/landscape.csv.gz": probes * len(dense.vgg.eta_factors),
        "runs/ics.csv.gz": probes * len(dense.vgg.ics_layers),
        "runs/act_channels.csv.gz": act_probes * acts * dense.n_channels,
        "runs/act_units.csv.gz": act_probes * acts * dense.n_units,
        "probes/landscape.csv": n_ckpt * len(probe.vgg.eta_factors),
        "probes/ics.csv": n_ckpt * len(probe.vgg.ics_layers),
        "probes/act_channels.csv": n_ckpt * len(probe.vgg.activation_layers) * probe.n_channels,
        "probes/act_units.csv": n_ckpt * len(probe.vgg.activation_layers) * probe.n_units,
        "probes/curvature.csv": n_ckpt,
        "probes/theorem41_layers.csv": n_ckpt * bn_layers,
        "probes/theorem42.csv": n_ckpt * bn_layers * probe.curvature.theorem42_channels,
    }


def git_bytes(paths: list[str], root: Path) -> int:
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    return sum((root / f).stat().st_size for f in out.split("\0") if f and (root / f).exists())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", type=Path, required=True, help="a finished quick run (results/quick)")
    ap.add_argument("--results", type=Path, default=Path("results"), help="the committed results")
    ap.add_argument("--figure-mb", type=float, default=0.45,
                    help="MB of one paper-scale figure (PNG + SVG) with VGG data")
    a = ap.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    p = load_params(root / "params.yaml", check_files=False)
    quick_run = next((a.quick / "runs").glob("vgg-bn-*/s0"))
    quick_probe = a.quick / "probes" / quick_run.parent.name / "s0"
    per_row = {}
    for name in vgg_rows(p, "bn"):
        kind, table = name.split("/")
        per_row[name] = bytes_per_row((quick_run if kind == "runs" else quick_probe) / table)
    fixed = sum(f.stat().st_size for f in (*quick_run.glob("*.json"), *quick_probe.glob("*.json")))
    vgg_cells = [c for c, cell in p.train.grid.items() if cell.model == "vgg"]
    vgg = 0.0
    for c in vgg_cells:
        rows = vgg_rows(p, p.cell(c).variant)
        run = fixed + sum(per_row[n][1] + per_row[n][0] * r for n, r in rows.items())
        vgg += run * p.train.seeds.n
    plots = len(vgg_cells) * 6 * (p.train.vgg.steps // 100 + 1) * 14  # 6 plots, a point per 100 steps, ~14 B/row
    dln_cells = [c for c, cell in p.train.grid.items() if cell.model == "dln"]
    dln = git_bytes([f"{a.results}/runs/{c}" for c in dln_cells] + [f"{a.results}/probes/{c}" for c in dln_cells]
                    + [f"{a.results}/lrscan/dln"], root)
    shared = git_bytes([f"{a.results}/stats", f"{a.results}/figures", f"{a.results}/REPORT.md",
                        f"{a.results}/plots", f"{a.results}/README.md", "dvc.lock"], root)
    vgg_figures = 12 * a.figure_mb * MB  # the figures that gain VGG panels: Figs 1, 1c, 2, 3a, 4, 5, 6, 8, 11a, 12, Extras
    total = dln + shared + vgg + plots + vgg_figures
    print(f"DLN half, measured (runs, probes, lrscan of {len(dln_cells)} cells): {dln / MB:.2f} MB")
    print(f"shared, measured now (stats, figures, REPORT.md, plots, dvc.lock): {shared / MB:.2f} MB")
    print(f"VGG tables, extrapolated ({len(vgg_cells)} cells x {p.train.seeds.n} seeds at paper scale): "
          f"{vgg / MB:.2f} MB")
    for n, (b, _) in per_row.items():
        print(f"    {n}: {b:.1f} B/row x {vgg_rows(p, 'bn')[n]} rows per bn run")
    print(f"VGG plots data, extrapolated: {plots / MB:.2f} MB; VGG figures, estimated: {vgg_figures / MB:.2f} MB")
    print(f"total, whole default grid: {total / MB:.1f} MB (budget 25 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
