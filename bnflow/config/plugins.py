"""Plug-in normalisation variants (train.plugins): importing, trial-building and trying each one at params load.

A plug-in is the user's own code: it is imported, built as Class(C) at every channel count the networks that use it
have, and applied to a trial batch before any job starts, and whatever it raises, prints or exits with becomes one
params error naming train.plugins.<name>.module. The channel widths come from the vocabulary (bnflow.vocab), never
from bnflow.models: params validation must not import the networks it configures.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import sys
import typing
from typing import Any

from bnflow.config.sections import TrainConfig
from bnflow.errors import ConfigError
from bnflow.vocab import CLASSIFIERS, RESNET_STAGE_WIDTHS, VARIANT_NAME, VARIANTS, VGG_LAYERS

_PLUGIN_SPEC = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)$")
PLUGIN_TRIAL_CHANNELS = 8
"""The channel count a plug-in is built with at params load (a trial build, before any job starts)."""
_TRIAL_SHAPES = {"image": (4, PLUGIN_TRIAL_CHANNELS, 4, 4), "vector": (4, PLUGIN_TRIAL_CHANNELS)}


@contextlib.contextmanager
def _plugin_code(key: str, spec: str, what: str) -> typing.Iterator[None]:
    """Run a plug-in's own code (its import, constructor or forward): whatever it raises or prints is one params error.

    It sees no command line (sys.argv is just the module name: a module that parses arguments at import gets none
    of bnflow's or Snakemake's) and its console output is kept for the message. SystemExit and KeyboardInterrupt
    are caught too: `sys.exit()` in a plug-in must not end `snakemake -n` silently with its status.
    """
    argv, printed = sys.argv, io.StringIO()
    sys.argv = [spec]
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    except BaseException as e:  # noqa: BLE001 - the user's code: any way out is a params error naming the key
        said = [line.strip() for line in printed.getvalue().splitlines() if line.strip()]
        detail = f"{type(e).__name__}: {e}" + (f"; it printed {said[-1][:200]!r}" if said else "")
        raise ConfigError(f"{key}: {what} ({detail})") from None
    finally:
        sys.argv = argv


def plugin_class(spec: str, key: str) -> Any:
    """Import the plug-in class named by `spec` ("pkg.module:Class"); ConfigError naming `key` when that fails.

    A standard-library or built-in module is refused before it is imported, and anything but a class before it is
    called: `os:_exit` or `sys:exit` would end the process in a way no handler can catch.
    """
    m = _PLUGIN_SPEC.match(spec)
    if not m:
        raise ConfigError(f"{key}: {spec!r} is not of the form 'pkg.module:Class'")
    top = m["module"].split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ConfigError(f"{key}: {m['module']!r} is a module of Python's standard library, not a plug-in; name a "
                          "module of your own that defines a torch.nn.Module class")
    with _plugin_code(key, spec, f"cannot import module {m['module']!r}; it must be importable from the project "
                                 f"root: python -c 'import {m['module']}'"):
        module = importlib.import_module(m["module"])
    cls = getattr(module, m["attr"], None)
    if cls is None or not callable(cls):
        raise ConfigError(f"{key}: module {m['module']!r} has no class {m['attr']!r}")
    if not inspect.isclass(cls):
        raise ConfigError(f"{key}: {m['attr']!r} in module {m['module']!r} is a {type(cls).__name__}, not a class; "
                          "a plug-in names a torch.nn.Module class, built as Class(C)")
    return cls


def check_plugin(spec: str, key: str, shapes: typing.Iterable[tuple[int, ...]] = ()) -> None:
    """Refuse (ConfigError naming `key`) a plug-in that cannot be imported, built as Class(C), or applied.

    Args:
        spec: "pkg.module:Class".
        key: the params key to name, train.plugins.<name>.module.
        shapes: activation shapes (N, C, ...) a module built as Class(C) must map to the same shape in training
            mode, e.g. (4, 8, 4, 4) for a conv net and (4, 8) for the deep linear net, and one per channel count
            the networks that use it have (a plug-in fine at 8 channels may fail at 10: found here, not in a job).
    """
    cls = plugin_class(spec, key)
    import torch  # here, not at the top: only a params file with plug-ins pays for it (the plug-in imports it too)

    if not issubclass(cls, torch.nn.Module):
        raise ConfigError(f"{key}: {spec} is not a torch.nn.Module class; its parameters would never train")
    for shape in shapes or [(4, PLUGIN_TRIAL_CHANNELS)]:
        c = shape[1]
        with _plugin_code(key, spec, f"{spec}({c}) cannot be built; a plug-in is constructed with the channel "
                                     "count as its only argument"):
            layer = cls(c)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with _plugin_code(key, spec, f"{spec}({c}) fails on activations of shape {tuple(shape)}"), torch.no_grad():
            out = layer.train()(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{key}: {spec}({c}) maps activations of shape {tuple(shape)} to {got}; a norm must "
                              "return its input's shape")


def _norm_channels(train: TrainConfig, model: str) -> list[int]:
    """The channel counts of the norm layers of `model` as train.<model> configures it (what Class(C) gets)."""
    cfg = train.model_config(model)
    if model == "dln":
        return [cfg.dim]
    if model == "resnet":
        widths = RESNET_STAGE_WIDTHS
    else:
        widths = [c for c in VGG_LAYERS[cfg.arch] if c != "M"]
    return [max(1, round(c * cfg.width_mult)) for c in widths]


def check_variants(train: TrainConfig) -> None:
    """Plug-in names and modules, and every grid cell's variant (a built-in one or a plug-in), at params load."""
    for name in train.plugins:
        if not VARIANT_NAME.match(name):
            raise ConfigError(f"train.plugins.{name}: a variant name uses only a-z, 0-9 and '_' (it is part of cell "
                              "and run ids)")
        if name in VARIANTS:
            raise ConfigError(f"train.plugins.{name}: {name!r} is the name of a built-in variant; choose another")
    for cell_id, cell in train.grid.items():
        if cell.variant not in VARIANTS and cell.variant not in train.plugins:
            plugins = ", ".join(train.plugins) or "none"
            raise ConfigError(f"train.grid.{cell_id}.variant: {cell.variant!r} is not one of {', '.join(VARIANTS)}, "
                              f"nor a plug-in of train.plugins ({plugins})")
    for name, plugin in train.plugins.items():
        models = {c.model for c in train.grid.values() if c.variant == name}
        shapes = [_TRIAL_SHAPES["image" if m in CLASSIFIERS else "vector"] for m in sorted(models)]
        shapes += [(*shape[:1], c, *shape[2:]) for m in sorted(models)
                   for shape in [_TRIAL_SHAPES["image" if m in CLASSIFIERS else "vector"]]
                   for c in sorted(set(_norm_channels(train, m)))]
        check_plugin(plugin.module, f"train.plugins.{name}.module", list(dict.fromkeys(shapes)))
