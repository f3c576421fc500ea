"""The recipes, a registry: name -> how every site of a fused form is quantized.

    w8          int8 per-output-channel weights, float activations
    w8a8-naive  int8 weights and per-tensor min-max int8 activations at every matmul, no
                outlier handling: kept so the gain of w8a8 is always measured against it
    w8a8        int8 weights and activations, each site's method chosen by the output error
                it causes on calibration rows: min-max, percentile clipping, SmoothQuant
                (sites fed by a norm, where the factor folds into the norm weight), a float
                split of the outlier channels, or a Hadamard rotation (Mamba's SSM output)
    w4          int4 group-wise weights (GPTQ), float activations; gather tables and the head
                int8 per channel

Gather tables are int8 per column in every recipe. Sites a form marks "float" (Mamba's low-rank
dt projection) stay float except in w8/w8a8-naive. The recurrence, gates, norms and states are
never quantized: they are not matmul inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...errors import EdgelmError
from . import methods
from .outliers import MAX_OUTLIER_FRACTION, analyse, outlier_channels
from .sites import site_modules

CHEAP = ("minmax", "percentile", "smooth")  # no extra graph node: preferred within TIE of the best
TIE = 1.05


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str  # the bundle precision it exports as (edgelm/precision.py)
    build: Callable  # (w, stats, role, foldable, group, head) -> (record | None, {method: error})
    summary: str


def _measured(rec: dict, w, stats) -> tuple[dict, dict]:
    rec["error"] = methods.output_error(rec, w, stats.sample_rows())
    return rec, {rec["method"]: rec["error"]}


def _weight_only(w, stats, role, foldable, group, head):
    return _measured(methods.weight_only(w), w, stats)


def _naive(w, stats, role, foldable, group, head):
    return _measured(methods.minmax(w, stats), w, stats)


def candidates(w, stats, role: str | None, foldable: bool) -> list[dict]:
    out = [methods.minmax(w, stats)] + [methods.percentile(w, stats, p) for p in methods.PERCENTILES]
    if foldable:
        out += [methods.smooth(w, stats, a) for a in methods.ALPHAS]
    channels = outlier_channels(stats.absmax)
    if 0 < len(channels) <= MAX_OUTLIER_FRACTION * w.shape[0]:
        out.append(methods.split(w, stats, channels))
    if role == "ssm_out":
        out.append(methods.rotate(w, stats))
    return out


def _outlier_aware(w, stats, role, foldable, group, head):
    if role == "float":
        return None, {}
    x = stats.sample_rows()
    ranked = candidates(w, stats, role, foldable)
    for rec in ranked:
        rec["error"] = methods.output_error(rec, w, x)
    ranked.sort(key=lambda r: r["error"])
    cheap = [r for r in ranked if r["method"].split()[0] in CHEAP and r["error"] <= TIE * ranked[0]["error"]]
    return (cheap[0] if cheap else ranked[0]), {r["method"]: r["error"] for r in ranked}


def _int4(w, stats, role, foldable, group, head):
    if role == "float":
        return None, {}
    return _measured(methods.weight_only(w) if head else methods.int4(w, stats, group), w, stats)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("w8", "int8", _weight_only, "int8 per-channel weights, float activations"),
    Recipe("w8a8-naive", "int8", _naive, "int8 weights, per-tensor min-max int8 activations, no outlier handling"),
    Recipe("w8a8", "int8", _outlier_aware, "int8 weights and activations, outlier-aware method per site"),
    Recipe("w4", "int4", _int4, "int4 group-wise GPTQ weights, float activations; head and tables int8"),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise EdgelmError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def plan(recipe: Recipe, fused, calib, group: int) -> tuple[dict, list[dict]]:
    """Records for every site of `fused` and one report row per site."""
    records, rows = {}, []
    for site, module, name, kind in site_modules(fused):
        w = getattr(module, name).float()
        if kind == "table":
            records[site] = rec = methods.table(w)
            rows.append({"site": site, "kind": "table", "shape": list(w.shape), "method": "int8 per column",
                         "error": rec["error"], "errors": {}, "outliers": None})
            continue
        stats = calib.sites[site]
        role, foldable = module.ROLES.get(name), name in module.NORM_OF
        rec, errors = recipe.build(w, stats, role, foldable, group, site == "w_head")
        if rec is not None:
            records[site] = rec
        rows.append({"site": site, "kind": "matmul", "shape": list(w.shape), "role": role,
                     "method": rec["method"] if rec else "float (kept)", "error": rec["error"] if rec else 0.0,
                     "errors": errors, "outliers": analyse(stats.absmax)})
    return records, rows
