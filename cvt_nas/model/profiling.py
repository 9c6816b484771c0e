"""`profile(cfg_or_model)`: params and MACs from the analytic model and/or fvcore."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cvt_nas.model.config import CvTConfig
from cvt_nas.model.cost import Cost, analytic_cost

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Profile:
    """Both counts of one architecture; ``fvcore`` is None when not asked for."""

    params: int
    macs: int
    img_size: int
    analytic: Cost | None
    fvcore: Cost | None


def profile(
    target: CvTConfig | nn.Module,
    img_size: int | None = None,
    method: Literal["analytic", "fvcore", "both"] = "both",
) -> Profile:
    """Params (exact) and MACs of a config or a built `CvT` at ``img_size``.

    ``analytic`` needs no model; ``fvcore`` builds one (if given a config) and traces it; ``both``
    computes the two and reports fvcore's numbers. Raises ValueError for an unknown method or a
    model without a ``cfg`` when the analytic count is asked for.
    """
    if method not in ("analytic", "fvcore", "both"):
        raise ValueError(f"unknown method {method!r}; choose one of analytic, fvcore, both")
    cfg = target if isinstance(target, CvTConfig) else getattr(target, "cfg", None)
    size = img_size if img_size is not None else (cfg.img_size if cfg is not None else 224)
    ana = fv = None
    if method in ("analytic", "both"):
        if cfg is None:
            raise ValueError("the analytic count needs a CvTConfig or a cvt_nas CvT model")
        ana = analytic_cost(cfg, size)
    if method in ("fvcore", "both"):
        from cvt_nas.model.fvcore_count import fvcore_cost
        from cvt_nas.model.network import CvT

        # a config is built at the asked size (the position embedding's size depends on it)
        model = CvT(target.replace(img_size=size)) if isinstance(target, CvTConfig) else target
        fv = fvcore_cost(model, size)
    best = fv if fv is not None else ana
    assert best is not None
    return Profile(params=best.params, macs=best.macs, img_size=size, analytic=ana, fvcore=fv)
