"""Readable tables: the architecture as one short string, Pareto tables, Markdown and LaTeX.

The Markdown and LaTeX writers are small and dependency-free (pandas' own need ``tabulate`` and
``jinja2``), and format numbers the same way in both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from cvt_nas.common import fmt
from cvt_nas.model.config import STAGE_FIELDS, CvTConfig
from cvt_nas.results.records import stage_column

# Display names and unit scales of the columns a Pareto table shows.
_DISPLAY = {
    "val_top1": ("val top-1 (%)", 1.0),
    "val_top5": ("val top-5 (%)", 1.0),
    "test_top1": ("test top-1 (%)", 1.0),
    "test_top5": ("test top-5 (%)", 1.0),
    "params": ("params (M)", 1e-6),
    "macs": ("MACs (M)", 1e-6),
    "wall_time_s": ("time (s)", 1.0),
}


def _stage_values(row: Mapping[str, Any], name: str) -> list[Any]:
    arch = row.get("arch")
    if isinstance(arch, str) and arch:
        return list(json.loads(arch)[name])
    out, s = [], 1
    while stage_column(name, s) in row and not fmt.is_missing(row[stage_column(name, s)]):
        out.append(row[stage_column(name, s)])
        s += 1
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    if isinstance(v, str) and "," in v:
        return f"({v})"
    return fmt.number(v)


def _per_stage(values: Sequence[Any], collapse: bool = False) -> str:
    texts = [_fmt(v) for v in values]
    if collapse and len(set(texts)) == 1:
        return texts[0]
    return "/".join(texts)


def arch_string(arch: CvTConfig | Mapping[str, Any] | pd.Series) -> str:
    """A short readable architecture: per-stage values joined by ``/``, one field after another.

    Example (CvT-13): ``dim 64/192/384; depth 1/2/10; heads 1/3/6; mlp 4; kv 2; embed
    k7s4/k3s2/k3s2; proj dw_bn k3; cls s3``. Per-block values show in parentheses
    (``kv 2/2/(1,2,2,1)``); fields equal in every stage show once.

    Args:
        arch: a config, a config dict, or a trials row (uses its ``arch`` JSON when present,
            else the ``<field>_s<stage>`` columns).
    """
    if isinstance(arch, CvTConfig):
        row: Mapping[str, Any] = {"arch": json.dumps(arch.to_dict())}
    elif isinstance(arch, pd.Series):
        row = arch.to_dict()
    elif "arch" in arch or any(stage_column("depth", 1) == k for k in arch):
        row = arch
    else:  # a plain config dict
        row = {"arch": json.dumps(dict(arch))}
    v = {name: _stage_values(row, name) for name in STAGE_FIELDS}
    if not v["depth"]:
        return ""
    embed = [
        f"patch{k}" if t == "patch" else f"k{k}s{s}"
        for t, k, s in zip(v["embed_type"], v["embed_kernel"], v["embed_stride"], strict=True)
    ]
    parts = [
        f"dim {_per_stage(v['embed_dim'])}",
        f"depth {_per_stage(v['depth'])}",
        f"heads {_per_stage(v['num_heads'])}",
        f"mlp {_per_stage(v['mlp_ratio'], collapse=True)}",
        f"kv {_per_stage(v['kv_stride'], collapse=True)}",
        f"embed {_per_stage(embed, collapse=True)}",
        f"proj {_per_stage(v['proj_method'], collapse=True)} "
        f"k{_per_stage(v['qkv_kernel'], collapse=True)}",
    ]
    for name, label in (("pos_embed", "pos"), ("cls_token", "cls")):
        stages = [str(i) for i, on in enumerate(v[name], start=1) if _truthy(on)]
        if stages:
            parts.append(f"{label} s{','.join(stages)}")
    return "; ".join(parts)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v) and not fmt.is_missing(v)


def pareto_table(front: pd.DataFrame, objectives: Mapping[str, str], *, full: bool = False
                 ) -> pd.DataFrame:
    """The Pareto front as a table, with the architecture as a readable string.

    Args:
        front: rows of `pareto_front` (already sorted).
        objectives: the study's objectives; their columns come first.
        full: keep every column (for pareto.csv) and add ``architecture``; otherwise a compact
            display table with units in the headers (for pareto.md and the terminal).
    """
    arch = pd.Series([arch_string(row) for _, row in front.iterrows()], index=front.index,
                     dtype="str")
    if full:
        out = front.copy()
        out["architecture"] = arch
        return out
    wanted = ["trial", *objectives, "val_top1", "test_top1", "macs", "params", "epochs",
              "arch_id"]
    cols = [c for c in dict.fromkeys(wanted) if c in front.columns]
    if "test_top1" in cols and front["test_top1"].isna().all():
        cols.remove("test_top1")
    out = front[cols].copy()
    for col, (label, scale) in _DISPLAY.items():
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64") * scale
            out = out.rename(columns={col: label})
    out["architecture"] = arch.to_numpy()
    return out.reset_index(drop=True)


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def to_markdown(df: pd.DataFrame, columns: Sequence[str] | None = None, *,
                floatfmt: str = ".2f", title: str | None = None,
                cell: Callable[[str, Any], str] | None = None, align: bool = True) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, missing values empty).

    Args:
        df: the table.
        columns: which columns, in order (default all).
        floatfmt: format spec for floats.
        title: an optional heading line above the table.
        cell: writes a present value from its column name and the value (default:
            `cvt_nas.common.fmt.cell` with ``floatfmt``); missing values are always empty.
        align: right-align numeric columns (``---:``); False writes plain ``|---|`` rules.
    """
    df = df if columns is None else df[list(columns)]
    names = [str(c) for c in df.columns]
    write = cell or (lambda _col, v: fmt.cell(v, floatfmt))
    lines = [] if title is None else [f"## {title}", ""]
    lines.append("| " + " | ".join(n.replace("|", "\\|") for n in names) + " |")
    if align:
        rules = ["---:" if _numeric(df[c]) else ":---" for c in df.columns]
        lines.append("| " + " | ".join(rules) + " |")
    else:
        lines.append("|" + "|".join("---" for _ in names) + "|")
    for row in df.itertuples(index=False):
        cells = ["" if fmt.is_missing(v) else write(n, v) for n, v in zip(names, row, strict=True)]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells)
                     + " |")
    if df.empty:
        lines.append("")
        lines.append("(no complete trials)" if title else "(empty)")
    return "\n".join(lines)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(df: pd.DataFrame, columns: Sequence[str] | None = None, *, floatfmt: str = ".2f",
             caption: str | None = None, label: str | None = None) -> str:
    """A booktabs LaTeX table (``\\usepackage{booktabs}``); a float environment with a caption.

    Args:
        df: the table.
        columns: which columns, in order (default all).
        floatfmt: format spec for floats.
        caption: table caption; with it (or a label) the tabular is wrapped in ``table``.
        label: ``\\label`` key.
    """
    df = df if columns is None else df[list(columns)]
    spec = "".join("r" if _numeric(df[c]) else "l" for c in df.columns)
    body = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
            " & ".join(latex_escape(str(c)) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        body.append(" & ".join(latex_escape(fmt.cell(v, floatfmt)) for v in row) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    if caption is None and label is None:
        return "\n".join(body)
    out = [r"\begin{table}[t]", r"\centering"]
    if caption is not None:
        out.append(rf"\caption{{{latex_escape(caption)}}}")
    if label is not None:
        out.append(rf"\label{{{label}}}")
    return "\n".join([*out, *body, r"\end{table}"])
