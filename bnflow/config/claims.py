"""The claims registry (params.yaml `claims:`): ClaimSpec, and the parser and checks that validate each entry.

A claim is validated on its own here (known metric, family and scale; a sesoi or margin on the right side of no
effect); that its arms name a built-in variant or a declared plug-in needs the whole file (bnflow.config.checks).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass

from bnflow.errors import ConfigError
from bnflow.vocab import (CLAIM_DIRECTIONS, CLAIM_FAMILIES, CLAIM_METRICS, CLAIM_SCALES, CLAIM_TYPES, MODELS,
                          REFERENCE_ARMS, VARIANT_NAME, VARIANTS)

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ClaimSpec:
    """One pre-declared claim (params.yaml `claims:`); params.yaml holds the registry (STATS.md "Claims registry v2").

    figure: where the paper shows it ("Fig 4a", "§3.1", or "beyond the paper").
    sesoi: superiority only, the smallest effect of interest on the reported scale. Ratio scale: the ratio on the
    claimed side of 1 (0.9 = "at least 10% lower" when lower is better, 1.25 when higher is better); the band
    (min(s, 1/s), max(s, 1/s)) is "no effect of interest". Difference scale: a magnitude > 0, band (−s, s).
    margin: the boundary of a non-inferiority or equivalence claim on the reported scale (ratio: e.g. 1.25 when
    lower is better, 0.8 when higher is better; difference: e.g. 0.05 / −0.02; equivalence: the band is
    (1/margin, margin) or (−margin, margin)); rationale: one line saying why that boundary.
    reference: the constant arm B stands for when arm_b is a reference arm (vocab.REFERENCE_ARMS: chance, 2/lr).
    seeds: (first, last), inclusive: the seed indices the claim tests (registry v3: a claim confirmed on fresh seeds
    names them, so the look that generated it never counts as its confirmation); None: every seed of its cells.
    """

    id: str
    family: str
    hypothesis: str
    metric: str
    model: str
    arm_a: str
    arm_b: str
    lr: float
    type: str
    direction: str
    scale: str
    figure: str
    sesoi: float | None = None
    margin: float | None = None
    rationale: str | None = None
    reference: float | None = None
    alpha: float = 0.05
    seeds: tuple[int, int] | None = None


_KEYS = tuple(f.name for f in dataclasses.fields(ClaimSpec))
_REQUIRED = ("id", "family", "hypothesis", "metric", "model", "arm_a", "arm_b", "lr", "type", "direction", "figure")


def _text(entry: typing.Mapping, key: str, path: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}.{key}: must be a non-empty string, got {value!r}")
    return value


def _number(entry: typing.Mapping, key: str, path: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = " (YAML reads 1e-6 as text: write 1.0e-6)" if isinstance(value, str) else ""
        raise ConfigError(f"{path}.{key}: must be a number, got {type(value).__name__} {value!r}{hint}")
    if not math.isfinite(value):
        raise ConfigError(f"{path}.{key}: must be finite, got {value!r}")
    return float(value)


def _seed_range(entry: typing.Mapping, path: str) -> tuple[int, int] | None:
    """A claim's `seeds: [first, last]` as a tuple, or None when the key is absent (every seed of its cells)."""
    value = entry.get("seeds")
    if value is None:
        return None
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok:
        raise ConfigError(f"{path}.seeds: must be [first, last], two integer seed indices (inclusive), got {value!r}")
    return int(value[0]), int(value[1])


def _one_of(value: str, choices: typing.Sequence[str], path: str) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: unknown value {value!r}; choose one of {', '.join(choices)}")


def check_claim(c: ClaimSpec, path: str) -> None:
    """Raise ConfigError (naming `path`.key) unless the claim is internally consistent and uses known names."""
    if not _ID.match(c.id):
        raise ConfigError(f"{path}.id: {c.id!r} must start with a letter and use only letters, digits and '_'")
    _one_of(c.family, CLAIM_FAMILIES, f"{path}.family")
    _one_of(c.metric, tuple(CLAIM_METRICS), f"{path}.metric")
    _one_of(c.model, MODELS, f"{path}.model")
    _one_of(c.type, CLAIM_TYPES, f"{path}.type")
    _one_of(c.direction, CLAIM_DIRECTIONS, f"{path}.direction")
    _one_of(c.scale, CLAIM_SCALES, f"{path}.scale")
    if not isinstance(c.figure, str) or not c.figure.strip():
        raise ConfigError(f"{path}.figure: must name the paper figure or section (e.g. 'Fig 4a'), got {c.figure!r}")
    kind, scale, models = CLAIM_METRICS[c.metric]
    if c.model not in models:
        raise ConfigError(f"{path}.metric: {c.metric!r} is not measured for model {c.model!r} "
                          f"(only for {', '.join(models)})")
    # arms: a built-in variant, or a plug-in's name (checked against train.plugins once the whole file is read)
    for key, arm in (("arm_a", c.arm_a), ("arm_b", c.arm_b)):
        if arm not in (*VARIANTS, *REFERENCE_ARMS) and not VARIANT_NAME.fullmatch(arm):
            _one_of(arm, (*VARIANTS, *(REFERENCE_ARMS if key == "arm_b" else ())), f"{path}.{key}")
    if c.arm_a in REFERENCE_ARMS:
        raise ConfigError(f"{path}.arm_a: {c.arm_a!r} is a reference arm; it can only be arm_b")
    if c.arm_a == c.arm_b:
        raise ConfigError(f"{path}.arm_b: must differ from arm_a ({c.arm_a!r})")
    if not c.lr > 0:
        raise ConfigError(f"{path}.lr: must be > 0, got {c.lr!r}")
    if not 0 < c.alpha <= 0.5:
        raise ConfigError(f"{path}.alpha: must be in (0, 0.5], got {c.alpha!r}")
    if c.seeds is not None and not 0 <= c.seeds[0] <= c.seeds[1]:
        raise ConfigError(f"{path}.seeds: must be [first, last] with 0 <= first <= last, got {list(c.seeds)}")
    if c.scale != scale:
        raise ConfigError(f"{path}.scale: {c.metric!r} is compared on the {scale!r} scale; "
                          f"set scale: {scale} or leave the key out")
    if kind == "binary" and c.type != "superiority":
        raise ConfigError(f"{path}.type: {c.metric!r} is a proportion, tested by Fisher's exact test: "
                          "only 'superiority' is supported")
    reference_arm = c.arm_b in REFERENCE_ARMS
    if reference_arm != (c.reference is not None):
        raise ConfigError(f"{path}.reference: give a reference value exactly when arm_b is one of "
                          f"{', '.join(REFERENCE_ARMS)}")
    if reference_arm and kind != "continuous":
        raise ConfigError(f"{path}.arm_b: {c.arm_b!r} needs a metric compared as a difference of means, "
                          f"not {c.metric!r}")
    if c.rationale is not None and (not isinstance(c.rationale, str) or not c.rationale.strip()):
        raise ConfigError(f"{path}.rationale: must be a non-empty line of text, got {c.rationale!r}")
    _check_sesoi(c, f"{path}.sesoi")
    _check_margin(c, f"{path}.margin")
    if c.type != "superiority" and c.rationale is None:
        raise ConfigError(f"{path}.rationale: a {c.type} claim needs a one-line rationale for its margin")


def _check_sesoi(c: ClaimSpec, path: str) -> None:
    """A superiority claim declares its smallest effect of interest on the claimed side of no effect (so a null
    result can be told apart from an underpowered one: the verdict not_reproduced); other claims use a margin."""
    if c.type != "superiority":
        if c.sesoi is not None:
            raise ConfigError(f"{path}: a {c.type} claim takes a margin, not a sesoi; remove it")
        return
    if c.sesoi is None:
        raise ConfigError(f"{path}: a superiority claim needs its smallest effect of interest "
                          f"(e.g. 0.9 on the ratio scale when lower is better)")
    if c.scale == "difference":
        if not c.sesoi > 0:
            raise ConfigError(f"{path}: must be > 0 on the difference scale (a magnitude), got {c.sesoi!r}")
        return
    if c.direction == "lower" and not 0 < c.sesoi < 1:
        raise ConfigError(f"{path}: must be in (0, 1) on the ratio scale when lower is better, got {c.sesoi!r}")
    if c.direction == "higher" and not c.sesoi > 1:
        raise ConfigError(f"{path}: must be > 1 on the ratio scale when higher is better, got {c.sesoi!r}")


def _check_margin(c: ClaimSpec, path: str) -> None:
    """A margin is required for non-inferiority/equivalence, forbidden for superiority, and must lie on the
    unfavourable side of the null (otherwise "not worse than the margin" would claim an improvement)."""
    if c.type == "superiority":
        if c.margin is not None:
            raise ConfigError(f"{path}: a superiority claim takes no margin (it declares a sesoi); remove it or "
                              "change the type")
        return
    if c.margin is None:
        raise ConfigError(f"{path}: a {c.type} claim needs a margin (e.g. 1.25 on the ratio scale)")
    if c.scale == "ratio" and not c.margin > 0:
        raise ConfigError(f"{path}: must be > 0 on the ratio scale, got {c.margin!r}")
    null = 1.0 if c.scale == "ratio" else 0.0
    if c.type == "equivalence":
        above, what = True, "an equivalence band (its upper end)"
    else:
        above, what = c.direction == "lower", f"a non-inferiority claim where {c.direction} is better"
    if above and not c.margin > null:
        raise ConfigError(f"{path}: must be > {null:g} for {what} on the {c.scale} scale, got {c.margin!r}")
    if not above and not c.margin < null:
        raise ConfigError(f"{path}: must be < {null:g} for {what} on the {c.scale} scale, got {c.margin!r}")


def parse_claims(raw: object) -> tuple[ClaimSpec, ...]:
    """Validate params.yaml's `claims:` list into ClaimSpecs; ConfigError names the key path (claims[3].sesoi).

    Args:
        raw: the YAML value, a list of mappings with ClaimSpec's keys (scale, sesoi, margin, rationale, reference,
            alpha optional; sesoi or margin + rationale as the claim's type requires).
    """
    if not isinstance(raw, list) or not raw:
        raise ConfigError("claims: must be a non-empty list of claim mappings (see params.yaml and STATS.md)")
    specs: list[ClaimSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(raw):
        path = f"claims[{i}]"
        if not isinstance(entry, typing.Mapping):
            raise ConfigError(f"{path}: must be a mapping of claim keys, got {type(entry).__name__}")
        unknown = sorted(str(k) for k in entry if k not in _KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(_KEYS)}")
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise ConfigError(f"{path}.{missing[0]}: missing; every claim needs {', '.join(_REQUIRED)}")
        text = {k: _text(entry, k, path) for k in _REQUIRED if k != "lr"}
        lr, alpha = _number(entry, "lr", path), _number(entry, "alpha", path)
        if lr is None:
            raise ConfigError(f"{path}.lr: must be a number, got None")
        # scale may be left out: it follows from the metric (an unknown metric fails in check_claim first).
        default_scale = CLAIM_METRICS[text["metric"]][1] if text["metric"] in CLAIM_METRICS else ""
        spec = ClaimSpec(**text, lr=lr, scale=_text(entry, "scale", path) if "scale" in entry else default_scale,
                         sesoi=_number(entry, "sesoi", path), margin=_number(entry, "margin", path),
                         rationale=_text(entry, "rationale", path) if entry.get("rationale") is not None else None,
                         reference=_number(entry, "reference", path), alpha=0.05 if alpha is None else alpha,
                         seeds=_seed_range(entry, path))
        check_claim(spec, path)
        if spec.id in seen:
            raise ConfigError(f"{path}.id: duplicate id {spec.id!r} (also claims[{seen[spec.id]}]); ids must be unique")
        seen[spec.id] = i
        specs.append(spec)
    return tuple(specs)
