"""The import rules that keep bnflow's floors in order (every import, also the lazy ones inside functions).

    vocab, errors          the bottom floor: import nothing from bnflow
    config                 imports only the bottom floor (it validates the claims registry itself)
    models                 read the vocabulary, never config
    tasks                  model + data + loss for one run: below train/ and probes/
    probes, curvature      measure a Task's model; never import train/ (probes: but its thread settings, see
                           THREAD_SETTINGS)
    stats, figures         read tables; never import train/, models or torch
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnflow"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file, as absolute dotted names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def modules(*subpaths: str) -> list[Path]:
    found = []
    for sub in subpaths:
        p = PACKAGE / sub
        found += sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]
    assert found, f"no modules under {subpaths}"
    return found


def offending(paths: list[Path], forbidden) -> list[str]:
    return [f"{p.relative_to(PACKAGE.parent)} imports {name}" for p in paths for name in sorted(imports_of(p))
            if forbidden(name)]


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


THREAD_SETTINGS = "bnflow.train.threads"
"""The one module of train/ that probes/ may import: the process-wide torch thread counts every step sets (cli,
lrscan, prepare, probes, train), not training code. It belongs on a floor of its own (bnflow/threads.py, beside
seeds.py), but bnflow/train and bnflow/probes are DVC dependencies of every committed train stage (dvc.yaml): moving
it changes their bytes and re-runs hours of training for no change in any number. Move it, and drop this exception,
when those results are next re-trained anyway."""


@pytest.mark.parametrize("floor", ["probes", "curvature", "stats", "figures"])
def test_measuring_and_reporting_floors_never_import_train(floor):
    allowed = (THREAD_SETTINGS,) if floor == "probes" else ()
    assert offending(modules(floor), lambda n: _under(n, "bnflow.train") and not _under(n, *allowed)) == []


def test_config_imports_only_the_bottom_floor():
    assert offending(modules("config"), lambda n: _under(n, "bnflow") and not _under(
        n, "bnflow.vocab", "bnflow.config", "bnflow.errors")) == []


def _constant(path: Path, name: str):
    """The literal a module assigns to `name` at its top level, read from the source (no import, so no torch)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} assigns no {name}")


def test_the_vocabulary_spells_the_widths_the_models_build():
    # config tries plug-ins at the vocabulary's widths; the networks must be built at the same ones
    from bnflow.vocab import RESNET_STAGE_WIDTHS, VGG_LAYERS

    assert _constant(PACKAGE / "models" / "resnet.py", "STAGE_WIDTHS") == RESNET_STAGE_WIDTHS
    assert "VGG_CONFIGS = VGG_LAYERS" in (PACKAGE / "models" / "vgg.py").read_text()


def test_the_bottom_floor_imports_nothing_from_bnflow():
    assert offending(modules("vocab", "errors"), lambda n: _under(n, "bnflow")) == []


def test_models_read_the_vocabulary_not_config():
    assert offending(modules("models"), lambda n: _under(n, "bnflow.config")) == []


@pytest.mark.parametrize("floor", ["stats", "figures"])
def test_stats_and_figures_never_import_torch_or_models(floor):
    assert offending(modules(floor), lambda n: _under(n, "torch", "bnflow.models", "bnflow.tasks")) == []


def test_tasks_sit_below_train_and_probes():
    assert offending(modules("tasks"), lambda n: _under(n, "bnflow.train", "bnflow.probes")) == []


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    # the rules above are only as good as imports_of: check it on a hand-made module
    pkg = tmp_path / "bnflow" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "mod.py"
    f.write_text("import os\nfrom . import sibling\n\ndef late():\n    from bnflow.train.loop import train_loop\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "bnflow"
    try:
        names = imports_of(f)
    finally:
        PACKAGE = saved
    assert {"os", "bnflow.sub.sibling", "bnflow.train.loop", "bnflow.train.loop.train_loop"} <= names
