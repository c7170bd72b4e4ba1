"""Reading params files into validated `Params`: YAML without duplicate keys, overlays, typed conversion.

Overlays (e.g. workflow/quick.yaml) are merged key by key on top of the base file, except that an overlay's
`train.grid` replaces the base grid as a whole (a quick run wants fewer cells, not more). Each value is converted
against its dataclass annotation and range rule (bnflow.config.sections) with a message naming its key, then the
whole is checked (bnflow.config.checks).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from bnflow.config.checks import check_params, require_files
from bnflow.config.claims import parse_claims
from bnflow.config.sections import Params
from bnflow.errors import ConfigError
from bnflow.vocab import MODELS

REPLACED_BY_OVERLAY = (("train", "grid"),)


def merge(base: dict, overlay: dict, path: tuple[str, ...] = ()) -> dict:
    """Deep-merge `overlay` onto `base` (mappings key by key; lists, scalars and train.grid replaced)."""
    out = dict(base)
    for k, v in overlay.items():
        here = (*path, str(k))
        if isinstance(v, dict) and isinstance(out.get(k), dict) and here not in REPLACED_BY_OVERLAY:
            out[k] = merge(out[k], v, here)
        else:
            out[k] = v
    return out


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, second: int):
        super().__init__(f"duplicate key {key} (lines {first} and {second}); YAML would keep only the last and "
                         "silently drop the first: merge the two into one")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping holding the same key twice.

    YAML's own rule is "last wins": a second `train:` in an overlay silently replaced the whole first one.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicates(node, "", set())
        return super().construct_document(node)


def _refuse_duplicates(node: yaml.Node, path: str, seen_nodes: set[int]) -> None:
    if id(node) in seen_nodes:  # an alias to a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            here = f"{path}.{name}" if path else name
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if name in lines:
                    raise _DuplicateKey(here, lines[name], key_node.start_mark.line + 1)
                lines[name] = key_node.start_mark.line + 1
            _refuse_duplicates(value_node, here, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicates(item, f"{path}[{i}]", seen_nodes)


def read_yaml(path: str | Path) -> dict:
    """One params file as plain data; a duplicate key, bad YAML or a non-mapping is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read params file ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def expand_seed_counts(raw: dict) -> dict:
    """train.seeds.n as one count per model family: an int (an overlay's `seeds: {n: 2}`) applies to every family;
    a mapping must name each family once, with a count >= 1."""
    n = raw.get("train", {}).get("seeds", {}).get("n") if isinstance(raw.get("train"), dict) else None
    if n is None or not isinstance(raw["train"].get("seeds"), dict):
        return raw
    if isinstance(n, bool) or not isinstance(n, (int, dict)):
        raise ConfigError(f"train.seeds.n: expected a count per model family ({', '.join(MODELS)}) or one int, "
                          f"got {n!r}")
    counts = dict.fromkeys(MODELS, n) if isinstance(n, int) else dict(n)
    unknown = [m for m in counts if m not in MODELS]
    if unknown:
        raise ConfigError(f"train.seeds.n.{unknown[0]}: no model family {unknown[0]!r}; known: {', '.join(MODELS)}")
    missing = [m for m in MODELS if m not in counts]
    if missing:
        raise ConfigError(f"train.seeds.n.{missing[0]}: missing key (one seed count per model family)")
    for m, c in counts.items():
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"train.seeds.n.{m}: must be an int >= 1, got {c!r}")
    seeds = dict(raw["train"]["seeds"], n=counts)
    return dict(raw, train=dict(raw["train"], seeds=seeds))


# ------------------------------------------------------------------------------------------- typed conversion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert YAML's lists/maps to frozen objects."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return types.MappingProxyType({str(k): _convert(v, item_tp, f"{key}.{k}") for k, v in value.items()})
    if tp is tuple:  # the claims registry: validated by its own parser (it knows the metrics and families)
        return parse_claims(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (YAML reads 1e-6 as text: write 1.0e-6)" if isinstance(value, str) else ""
            raise ConfigError(f"{key}: expected a number, got {value!r}{hint}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # a bug in this module, not in params.yaml


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if meta.get("nonempty") and len(value) == 0:
        raise ConfigError(f"{key}: must not be empty")
    items = value.values() if isinstance(value, typing.Mapping) else value if isinstance(value, tuple) else (value,)
    for v in items:
        if not isinstance(v, (int, float)):
            continue
        if meta.get("ge") is not None and v < meta["ge"]:
            raise ConfigError(f"{key}: must be >= {meta['ge']}, got {v!r}")
        if meta.get("gt") is not None and v <= meta["gt"]:
            raise ConfigError(f"{key}: must be > {meta['gt']}, got {v!r}")
        if meta.get("le") is not None and v > meta["le"]:
            raise ConfigError(f"{key}: must be <= {meta['le']}, got {v!r}")


def _build(cls: type, raw: Any, key: str) -> Any:
    prefix = f"{key}." if key else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'params'}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key{hint} (valid keys: {', '.join(fields)})")
    missing = [name for name in fields if name not in raw]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: missing key")
    values = {}
    for name, f in fields.items():
        values[name] = _convert(raw[name], hints[name], prefix + name)
        _check_range(values[name], f.metadata, prefix + name)
    return cls(**values)


def from_dict(raw: dict, *, check_files: bool = True) -> Params:
    """Validate a raw params mapping into `Params` (raises ConfigError naming the key).

    Args:
        raw: params.yaml's content (after overlays).
        check_files: also require the files the params name (prepare.archive) to exist; worker processes that
            re-validate params their parent already checked pass False.
    """
    params = _build(Params, expand_seed_counts(raw), "")
    check_params(params)
    if check_files:
        require_files(params)
    return params


def _key_paths(node: Any, path: str = "") -> typing.Iterator[str]:
    """Every key path of a params file: `a.b.c` for mappings, `a[3].b` for list items."""
    if isinstance(node, dict):
        for k, v in node.items():
            here = f"{path}.{k}" if path else str(k)
            yield here
            yield from _key_paths(v, here)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _key_paths(v, f"{path}[{i}]")


def load_params(*paths: str | Path, check_files: bool = True) -> Params:
    """Load params.yaml and optional overlays (later files win) into validated, frozen `Params`.

    `check_files=False` leaves out the check that files the params name exist (prepare.archive): a step that never
    reads them (every step but prepare; a clone with committed results but no archive) must not need them.

    A ConfigError about key K also says which file set K (the last one that defines it), so a mistake in an overlay
    is not looked for in params.yaml.
    """
    if not paths:
        raise ConfigError("no params file given (pass --params params.yaml)")
    raw: dict = {}
    origin: dict[str, Path] = {}
    for path in paths:
        data = read_yaml(path)
        origin |= dict.fromkeys(_key_paths(data), Path(path))
        raw = merge(raw, data)
    try:
        return from_dict(raw, check_files=check_files)
    except ConfigError as e:
        key = str(e).split(": ", 1)[0]
        if key not in origin:
            raise
        raise ConfigError(f"{e} (set in {origin[key]})") from None


def to_plain(obj: Any) -> Any:
    """Params (or any section) as plain YAML/JSON-serialisable data, for provenance records."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, typing.Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    return obj
