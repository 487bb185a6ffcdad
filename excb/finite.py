"""Non-finite numbers never reach a table: checks that name the tensors holding NaN or Inf.

A backbone with one ``inf`` weight embeds every image as NaN; k-NN on NaN features still
"classifies" (at chance), so without a check such a run ends ``complete`` with a plausible
looking row. Every stage therefore checks the weights it loads, the features it computes or
reads from a cache, and the weights it trains.
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

import torch

from excb import ExcbError


def nonfinite_tensors(named: Iterable[Tuple[str, torch.Tensor]]) -> List[str]:
    """``["name (3 nan, 1 inf of 4096)", ...]`` for every floating tensor holding NaN or Inf."""
    bad: List[str] = []
    for name, t in named:
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if bool(finite.all()):
            continue
        n_nan = int(torch.isnan(t).sum())
        n_inf = int((~finite).sum()) - n_nan
        parts = [f"{n_nan} nan" if n_nan else "", f"{n_inf} inf" if n_inf else ""]
        bad.append(f"{name} ({', '.join(p for p in parts if p)} of {t.numel()})")
    return bad


def describe(bad: List[str], limit: int = 4) -> str:
    more = f", ... (+{len(bad) - limit} more)" if len(bad) > limit else ""
    return ", ".join(bad[:limit]) + more


def require_finite(named: Iterable[Tuple[str, torch.Tensor]], what: str, hint: str) -> None:
    """Raise a one-line :class:`~excb.ExcbError` naming the non-finite tensors of ``what``."""
    bad = nonfinite_tensors(named)
    if bad:
        raise ExcbError(f"{what}: non-finite values (NaN/Inf) in {len(bad)} tensor(s): {describe(bad)}; {hint}")


def require_finite_rows(x: torch.Tensor, what: str, hint: str) -> None:
    """Raise naming ``what`` and how many rows (samples) of ``x`` hold NaN or Inf."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    finite_rows = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bool(finite_rows.all()):
        return
    bad = (~finite_rows).nonzero().flatten()
    raise ExcbError(f"{what}: {bad.numel()} of {x.shape[0]} vectors are non-finite (NaN/Inf), first at rows "
                    f"{bad[:5].tolist()}; {hint}")


__all__ = ["nonfinite_tensors", "require_finite", "require_finite_rows", "describe"]
