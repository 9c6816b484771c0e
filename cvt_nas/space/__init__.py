"""Search spaces declared in YAML: distributions over `CvTConfig` and `TrainConfig` fields.

A space file (``search_spaces/*.yaml``) has these top-level keys::

    name: cvt_micro              # default study name (default: the file's stem)
    description: free text
    base: cvt_micro              # a preset name, or a mapping of CvTConfig fields
                                 # (optionally with ``preset: NAME`` plus overrides)
    model:                       # CvTConfig fields, plus the derived field ``head_dim``
      depth: [1, {choice: [1, 2]}, {int: [1, 4]}]   # a list: one entry per stage
      embed_dim: {choice: [32, 48, 64], per: stage}  # one draw per stage (free per stage)
      mlp_ratio: {choice: [2, 4], per: block}        # one draw per block of every stage
      head_dim: 16                                   # num_heads = embed_dim // head_dim
      act: {choice: [gelu, quick_gelu]}              # tied (the default): one draw
    train:                       # TrainConfig fields; ``recipe`` picks the base recipe
      recipe: reduced
      epochs: 1
      lr: {float: [5.0e-4, 5.0e-3], log: true}
    constraints:
      max_params: 1.5M           # numbers, or strings with k / M / G suffixes
      max_macs: 40M              # MACs at the search image size (train.img_size)
      nondecreasing: [embed_dim] # validity rules, see `Budget`
    search:                      # defaults for `cvt-nas search` flags
      trials: 10
      objectives: [val_top1:max, macs:min]

A value that is not a mapping is fixed. A distribution is a mapping with exactly one of
``choice: [...]``, ``int: [low, high]`` (with ``step``, ``log``) or ``float: [low, high]``
(with ``step`` or ``log``), plus ``per: model | stage | block`` (default ``model``: one value
tied across stages). ``per: block`` is allowed for ``mlp_ratio`` and ``kv_stride`` only.

Sampling is backend-neutral: `SearchSpace.sample` takes any object with Optuna's
``suggest_categorical`` / ``suggest_int`` / ``suggest_float`` (an Optuna trial fits directly) and
returns a `Sample` with the `CvTConfig`, the `TrainConfig` and the flat parameter dict. Parameter
names follow the results table: ``depth_s2`` (stage 2), ``kv_stride_s3_b10`` (stage 3, block 10),
``embed_dim`` (tied), ``train.lr``.

This package imports no torch: spaces are loaded, checked, sampled and costed without a model.
Modules: `types` (distributions, field specs, budgets, samples), `sampling` (`SearchSpace`),
`parse` (YAML loading and validation), `analysis` (satisfiability and cost extremes).
"""

from __future__ import annotations

from cvt_nas.results.objectives import OBJECTIVE_NAMES, parse_objectives
from cvt_nas.space.analysis import SpaceReport, analyze, dist_of, greedy, require_satisfiable
from cvt_nas.space.parse import (
    PRUNERS,
    SAMPLERS,
    apply_overrides,
    load_space,
    order_fields,
    parse_number,
    parse_space,
)
from cvt_nas.space.sampling import FixedSuggest, RandomSuggest, SearchSpace
from cvt_nas.space.types import (
    INVALID,
    Budget,
    Dist,
    Entry,
    FieldSpec,
    Sample,
    SpaceError,
    Suggest,
    Violation,
)

__all__ = [
    "INVALID", "OBJECTIVE_NAMES", "PRUNERS", "SAMPLERS", "Budget", "Dist",
    "Entry", "FieldSpec", "FixedSuggest", "RandomSuggest", "Sample", "SearchSpace", "SpaceError",
    "SpaceReport", "Suggest", "Violation", "analyze", "apply_overrides", "dist_of", "greedy",
    "load_space", "order_fields", "parse_number", "parse_objectives", "parse_space",
    "require_satisfiable",
]
