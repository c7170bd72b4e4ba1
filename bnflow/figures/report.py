"""REPORT.md beside the figures, and the caption file of Snakemake's HTML report (workflow/report/figures.rst)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bnflow.stats.registry import natural_key

DIGITS = 3  # significant digits of every number in a report table (fixed, so the report is byte-stable)


@dataclass(frozen=True)
class Entry:
    """One figure of the report: file stem, the paper's figure label, a short title, and its caption (or why not).

    Args:
        about: what the figure shows, a few sentences independent of the data (Snakemake's report captions).
        waiting: grid cells (or 'lrscan/{model}' folders) the figure would draw that are not run yet.
    """

    name: str
    paper: str
    title: str
    caption: str | None = None
    skipped: str | None = None
    about: str = ""
    waiting: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """A small table of REPORT.md: anchor name, heading, a paragraph saying what it holds, and the rows.

    Args:
        frame: column headers as written; float cells are printed with DIGITS significant digits, NaN as "—".
    """

    name: str
    title: str
    text: str
    frame: pd.DataFrame


def format_cell(value: object, digits: int = DIGITS) -> str:
    """A table cell: floats to `digits` significant digits ('1.19e-07', '0.25'), NaN/None as '—', others as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value).replace("|", "\\|") or "—"


def markdown_table(frame: pd.DataFrame, digits: int = DIGITS) -> list[str]:
    """The lines of a GitHub-flavoured Markdown table, rows in the frame's order."""
    lines = ["| " + " | ".join(format_cell(str(c)) for c in frame.columns) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(v.item() if hasattr(v, "item") else v, digits) for v in row)
                     + " |")
    return lines


def _claims_body(claims_md: str) -> str:
    """claims.md without its own top heading, its headings pushed two levels down (they sit under '## Claims')."""
    lines = claims_md.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("##" + line if line.startswith("#") else line for line in lines).strip()


def grid_table(grid: pd.DataFrame) -> pd.DataFrame:
    """The grid's cells for REPORT.md: present ones with their seeds, the others "not run yet" (grid order)."""
    return pd.DataFrame({"cell": grid.cell, "model": grid.model, "variant": grid.variant,
                         "lr": [f"{float(v):g}" for v in grid.lr],
                         "status": ["present" if p else "not run yet" for p in grid.present.astype(bool)],
                         "seeds": [s if p else "" for s, p in zip(grid.seeds, grid.present.astype(bool), strict=True)]})


UNLISTED = {
    "vgg": "paper-scale VGG, which needs a GPU (workflow/paper-vgg.yaml lists its cells)",
    "vgg_cpu": "reduced-scale VGG, not run here yet (results/README.md says which run next and which are beyond "
               "this machine's budget; add a cell to train.grid to run it)",
}
"""How the Grid section names the cells of a model family that the claims need and the grid does not hold."""


def unlisted_cells(claim_cells: Sequence[tuple[str, str]], grid_cells: Sequence[str]) -> dict[str, list[str]]:
    """Cells the registered claims compare that are not in the grid, by model family (their claims: not_run_yet).

    Args:
        claim_cells: (model family, cell id) of every arm of every claim that is a variant, not a reference.
        grid_cells: the grid's cell ids.
    """
    out: dict[str, list[str]] = {}
    for model, cell in claim_cells:
        if cell not in grid_cells and cell not in out.get(model, []):
            out.setdefault(model, []).append(cell)
    return {m: sorted(cells, key=natural_key) for m, cells in sorted(out.items())}


def unlisted_text(unlisted: dict[str, list[str]]) -> list[str]:
    """The Grid section's lines for unlisted_cells: one bullet per model family."""
    if not unlisted:
        return []
    lines = ["Cells the registered claims compare that this grid does not hold (their claims read `not_run_yet`):", ""]
    for model, cells in unlisted.items():
        lines.append(f"- {UNLISTED.get(model, model)}: {', '.join(cells)}.")
    return lines + [""]


SCALES = {"vgg": "paper", "vgg_cpu": "reduced (vgg_cpu)", "dln": "DLN", "resnet": "ResNet (beyond the paper)"}
"""How the verdict table names a claim's scale, by its model family (PROTOCOL §10: vgg_cpu is the reduced scale)."""
UNCONFIRMED = {"exploratory": "exploratory", "exploratory_cpu": "exploratory", "post_hoc": "post hoc"}
"""Families whose claims are labelled beside the confirmatory ones: never adjusted, and post hoc never supported."""


def verdict_table(claims: pd.DataFrame, models: dict[str, str]) -> pd.DataFrame:
    """REPORT.md's opening table from claims.csv: claim, scale, verdict, estimate, CI, family, one row per claim.

    Rows in natural claim order, so a paper-scale VGG claim and its reduced-scale twin sit side by side (C1, C1_cpu);
    exploratory and post hoc claims carry their label in the claim column.

    Args:
        claims: claims.csv as read by pandas (claim_id, family, verdict, estimate, ci_low, ci_high, ci_level, ...).
        models: claim id -> model family (params.claims); a claim not in it shows its scale as "—".
    """
    rows = []
    for _, r in sorted(claims.iterrows(), key=lambda item: natural_key(str(item[1]["claim_id"]))):
        label = UNCONFIRMED.get(str(r["family"]))
        ci = "—"
        if pd.notna(r["ci_low"]) and pd.notna(r["ci_high"]):
            ci = f"{format_cell(float(r['ci_low']), 4)} to {format_cell(float(r['ci_high']), 4)}"
        rows.append({"claim": f"{r['claim_id']} ({label})" if label else str(r["claim_id"]),
                     "scale": SCALES.get(models.get(str(r["claim_id"]), ""), "—"), "verdict": str(r["verdict"]),
                     "estimate": format_cell(float(r["estimate"]), 4) if pd.notna(r["estimate"]) else "—",
                     "CI": ci, "family": str(r["family"])})
    return pd.DataFrame(rows, columns=["claim", "scale", "verdict", "estimate", "CI", "family"])


VERDICT_NOTE = (
    "Every registered claim (claims.md below says why each verdict follows). The estimate is a ratio A/B (or a "
    "difference) with its CI (stats.ci_level), from claims.csv; a paper-scale VGG claim and its reduced-scale twin "
    "(`_cpu`, PROTOCOL §10) sit side by side, and a paper-scale verdict is never filled from reduced-scale runs. Exploratory "
    "claims are not adjusted for multiplicity; post hoc claims come from the look that generated a hypothesis and are "
    "never supported. C12_dln and C13_dln compare train_loss_auc_log, the mean log training loss: their estimate is a "
    "ratio of geometric-mean losses (exp of the mean log-loss difference), not a ratio of areas.")


def report_markdown(entries: Sequence[Entry], *, header: str, claims_md: str | None,
                    tables: Sequence[Table] = (), link_prefix: str = "", grid: pd.DataFrame | None = None,
                    verdicts: pd.DataFrame | None = None, unlisted: dict[str, list[str]] | None = None) -> str:
    """The figures' report: the grid's present and absent cells, every drawn figure (relative links to PNG and SVG)
    with its caption, the tables, what is not drawn or waits for cells, then the claims.

    Args:
        entries: in registry order; skipped ones are listed with their reason.
        header: a paragraph on what was run (grid, seeds, band).
        claims_md: the stats step's claims.md, or None when the stats outputs were not given.
        tables: small result tables, printed after the figures.
        link_prefix: the figures folder relative to the report (e.g. "figures/"; "" when they sit together).
        grid: the grid's cells (select.GRID_COLUMNS), or None to leave the grid section out.
        verdicts: verdict_table's rows, printed first (before the figures), or None to leave them out.
        unlisted: unlisted_cells, listed in the grid section after its table; None or empty: nothing.
    """
    drawn = [e for e in entries if e.caption is not None]
    skipped = [e for e in entries if e.skipped is not None]
    partial = [e for e in drawn if e.waiting]
    out = ["# bnflow: figures and claims", "",
           "Re-run of Santurkar et al. 2018, \"How Does Batch Normalization Help Optimization?\" (arXiv:1805.11604). "
           "Generated by `python -m bnflow figures`; every figure is a PNG with an SVG beside it.", "", header, ""]
    if verdicts is not None:
        out += ['<a id="verdicts"></a>', "", "## Verdicts", "", VERDICT_NOTE, "", *markdown_table(verdicts), ""]
    out += ["## Contents", ""]
    out += ["- [Verdicts](#verdicts)", "- [Claims: why each verdict](#claims)"] if verdicts is not None else []
    out += ["- [Grid: cells present and not run yet](#grid)"] if grid is not None else []
    out += [f"- [{e.paper}: {e.title}](#{e.name})" for e in drawn]
    out += [f"- [Table: {t.title}](#{t.name})" for t in tables]
    out += ["- [Not drawn](#not-drawn)"] if skipped else []
    out += ["- [Figures waiting for cells not run yet](#waiting)"] if partial else []
    if grid is not None:
        n_present = int(grid.present.astype(bool).sum())
        out += ["", '<a id="grid"></a>', "", "## Grid", "",
                f"{n_present} of {len(grid)} grid cells present (a cell is present when its runs folder exists); "
                f"{len(grid) - n_present} not run yet. Figures and tables draw the present cells; a figure that "
                "would draw an absent cell names it in its caption and under 'Figures waiting for cells not run "
                "yet'.", "", *markdown_table(grid_table(grid)), "", *unlisted_text(unlisted or {})]
    out += ["", "## Figures", ""]
    for e in drawn:
        out += [f'<a id="{e.name}"></a>', "", f"### {e.paper}: {e.title}", "",
                f"![{e.paper}: {e.title}]({link_prefix}{e.name}.png)", "", e.caption or "", "",
                f"Files: [{e.name}.png]({link_prefix}{e.name}.png), [{e.name}.svg]({link_prefix}{e.name}.svg)", ""]
    if tables:
        out += ["## Tables", ""]
    for t in tables:
        out += [f'<a id="{t.name}"></a>', "", f"### {t.title}", "", t.text, "", *markdown_table(t.frame), ""]
    if skipped:
        out += ['<a id="not-drawn"></a>', "", "## Not drawn", ""]
        out += [f"- {e.paper} (`{e.name}`): {e.skipped}."
                + (f" Waits for (not run yet): {', '.join(e.waiting)}." if e.waiting else "") for e in skipped]
        out += [""]
    if partial:
        out += ['<a id="waiting"></a>', "", "## Figures waiting for cells not run yet", ""]
        out += [f"- [{e.paper}](#{e.name}) (`{e.name}`): drawn without {', '.join(e.waiting)}." for e in partial]
        out += [""]
    out += ['<a id="claims"></a>', "", "## Claims", ""] if verdicts is not None else ["## Claims", ""]
    if claims_md is None:
        out += ["The stats step's claims.md was not given to this step (`--claims`), so no verdicts are listed.", ""]
    else:
        out += [_claims_body(claims_md), ""]
    return "\n".join(out)


def report_rst(entries: Sequence[Entry]) -> str:
    """Caption file for `snakemake --report`: one rst text per figure, picked by the `{name}` wildcard of the pattern.

    Snakemake renders the caption with Jinja2, with `snakemake.wildcards.name` set to the PNG's stem; the captions
    here are the static part (the paper's label, title and what the figure shows); REPORT.md holds the full,
    data-dependent captions (seeds, band, data source, layers, cells not run yet).
    """
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def rst_text(text: str) -> str:  # |x| would be an rst substitution, *x* emphasis
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")

    def caption(e: Entry) -> str:
        return f"**{rst_text(e.paper)}: {rst_text(e.title)}.** {rst_text(e.about)}".rstrip()

    items = ",\n".join(f"    {quoted(e.name)}: {quoted(caption(e))}" for e in entries)
    return ("{# Generated by bnflow.figures.report.report_rst from the figure registry; do not edit by hand:\n"
            "   python -c \"from bnflow.figures.render import write_report_rst; write_report_rst()\" #}\n"
            "{% set captions = {\n" + items + "\n} %}\n"
            "{{ captions.get(snakemake.wildcards.name, snakemake.wildcards.name) }}\n\n"
            "From the bnflow ``figures`` step. The full caption (seeds, band, data source, BN mode, layers, grid cells "
            "not run yet) is under the figure and in ``REPORT.md`` beside it.\n")
