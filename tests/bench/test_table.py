"""`cvt_nas.bench.load` and its lookups, on the small real table tests/data/tiny_bench/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cvt_nas.bench import FORMAT, load
from cvt_nas.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_load_gives_the_three_parts_and_validates_them(tiny_table):
    b = load(tiny_table)
    assert b.manifest["format"] == FORMAT and b.epochs == 2
    assert b.archs["arch_id"].is_unique
    assert set(b.archs["source"]) == {"sample"} and len(b.archs) == 10
    assert set(b.table["arch_id"]) <= set(b.archs["arch_id"])
    assert b.param_names and all(not n.startswith("p:") for n in b.param_names)
    assert all(n in b.space().random(0).params for n in b.param_names)


def test_a_table_older_than_the_cpu_time_column_loads_with_nan(table_copy):
    t = pd.read_parquet(table_copy / "table.parquet")
    t.drop(columns=["cpu_time_s"], errors="ignore").to_parquet(table_copy / "table.parquet")
    b = load(table_copy)
    assert b.table["cpu_time_s"].isna().all() and len(b.table) == len(t)


def test_query_by_id_config_and_params_give_the_same_row(tiny_table):
    b = load(tiny_table)
    arch = b.archs.loc[b.archs["source"] == "sample", "arch_id"].iloc[0]
    by_id = b.query(arch)
    assert by_id == b.query(b.config(arch)) == b.query(b.params_of(arch))
    assert b.lookup_config(b.config(arch)) == b.lookup_config(b.params_of(arch)) == arch
    row = b.table[(b.table["arch_id"] == arch) & (b.table["seed"] == by_id.seed)
                  & (b.table["epoch"] == 2)].iloc[0]
    assert by_id.epoch == by_id.epochs == 2 and by_id.val_top1 == row["val_top1"]
    assert by_id.time_s == row["time_s"]
    assert by_id.test_top1 == (None if pd.isna(row["test_top1"]) else row["test_top1"])
    a = b.archs.set_index("arch_id").loc[arch]
    assert (by_id.params, by_id.macs) == (a["params"], a["macs"])
    first = b.query(arch, epoch=1, seed=by_id.seed)
    assert first.epoch == 1 and first.test_top1 is None and first.time_s < by_id.time_s


def test_query_default_seed_is_the_smallest_complete_one_and_others_can_be_asked(tiny_table):
    b = load(tiny_table)
    two = [a for a in b.archs["arch_id"] if len(b.seeds(a)) == 2]
    assert two, "the tiny table has architectures run with two seeds"
    arch = two[0]
    assert b.seeds(arch) == [0, 1] and b.query(arch).seed == 0
    assert b.query(arch, seed=1).seed == 1
    with pytest.raises(KeyError, match=r"no run with seed 7 \(seeds run: \[0, 1\]\)"):
        b.query(arch, seed=7)
    with pytest.raises(KeyError, match="has epochs"):
        b.query(arch, epoch=3)


def test_unknown_architectures_are_one_line_key_errors(tiny_table):
    b = load(tiny_table)
    with pytest.raises(KeyError, match="arch_id 'cvt-000000000000' is not in the table"):
        b.query("cvt-000000000000")
    other = b.space().base.replace(embed_dim=(16, 16, 128), num_heads=(1, 1, 2))
    with pytest.raises(KeyError, match="is not in the table"):
        b.lookup_config(other)
    params = b.params_of(b.archs["arch_id"].iloc[0])
    params[b.param_names[0]] = -1
    with pytest.raises(KeyError, match="no architecture has these parameters"):
        b.lookup_config(params)


def _brute_nearest(b, params):
    cands = sorted(a for a in b.archs.loc[b.archs["source"] == "sample", "arch_id"]
                   if b.seeds(a))
    dist = {a: sum(params.get(n) != b.params_of(a).get(n) for n in b.param_names)
            for a in cands}
    best = min(dist.values())
    return min(a for a in cands if dist[a] == best), best


def test_nearest_is_the_brute_force_hamming_minimum_with_ties_to_the_smallest_id(table_copy):
    archs = pd.read_parquet(table_copy / "archs.parquet")
    named = archs["arch_id"].iloc[0]  # relabelled as a named architecture: no parameters
    params = [c for c in archs.columns if c.startswith("p:")]
    archs.loc[0, ["source", "sample_index", "name"]] = ["named", -1, "table2:row"]
    archs[params] = archs[params].astype(object)
    archs.loc[0, params] = None
    archs.to_parquet(table_copy / "archs.parquet")
    b = load(table_copy)
    space = b.space()
    for k in range(60):  # random points of the space, valid or not
        params = {n: v for n, v in space.random(k).params.items() if not n.startswith("train.")}
        got = b.nearest(params)
        assert got == _brute_nearest(b, params)
        assert got[0] != named
        assert b.distance(params, got[0]) == got[1]
    for arch in b.archs.loc[b.archs["source"] == "sample", "arch_id"]:
        assert b.nearest(b.params_of(arch)) == (arch, 0)


def test_load_refuses_what_is_not_a_table_with_one_line(tiny_table, table_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such table directory; rebuild it with"):
        load(tmp_path / "nowhere")
    manifest = json.loads((table_copy / "manifest.json").read_text())
    (table_copy / "manifest.json").write_text(json.dumps({**manifest, "format": "cvt-bench/0"}))
    with pytest.raises(ValueError, match=r"manifest.json: field 'format' is 'cvt-bench/0'"):
        load(table_copy)
    (table_copy / "manifest.json").write_text(json.dumps(manifest))
    archs = pd.read_parquet(table_copy / "archs.parquet")
    archs.drop(columns=["macs"]).to_parquet(table_copy / "archs.parquet")
    with pytest.raises(ValueError, match=r"archs.parquet: column\(s\) \['macs'\] missing"):
        load(table_copy)
    pd.concat([archs, archs.iloc[:1]]).to_parquet(table_copy / "archs.parquet")
    with pytest.raises(ValueError, match="appears twice; arch_id must be unique"):
        load(table_copy)
    archs.iloc[1:].to_parquet(table_copy / "archs.parquet")
    with pytest.raises(ValueError, match="has runs but no row in archs.parquet"):
        load(table_copy)
    archs.to_parquet(table_copy / "archs.parquet")
    table = pd.read_parquet(table_copy / "table.parquet")
    table.assign(status="finished").to_parquet(table_copy / "table.parquet")
    with pytest.raises(ValueError, match=r"column 'status' holds \['finished'\]"):
        load(table_copy)
    (table_copy / "table.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="table.parquet: missing"):
        load(table_copy)


def test_a_table_that_grew_unevenly_still_answers(tiny_table, table_copy):
    """More seeds for some architectures, and a failed run: nothing assumes a full grid."""
    table = pd.read_parquet(table_copy / "table.parquet")
    arch = table["arch_id"].iloc[-1]
    failed = table[(table["arch_id"] == arch)].head(1).assign(seed=5, status="diverged")
    pd.concat([table, failed]).to_parquet(table_copy / "table.parquet")
    b = load(table_copy)
    assert 5 not in b.seeds(arch)  # not a complete run
    assert b.query(arch, seed=5).status == "diverged"
    assert len(b.final()) == len(load(tiny_table).final())


def test_the_cli_turns_a_missing_table_into_exit_2(capsys, tmp_path):
    code = main(["search", str(ROOT / "tests/data/tiny_space.yaml"), "--backend",
                 f"table:{tmp_path / 'none'}", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such table directory" in err[0]


def test_querying_imports_no_torch(tiny_table):
    code = ("import sys; from cvt_nas.bench import load, rank_agreement, table_front\n"
            f"b = load({str(tiny_table)!r}); b.query(b.archs.arch_id[0]); b.nearest({{}})\n"
            "table_front(b, {'val_top1': 'max', 'macs': 'min'}); rank_agreement(b)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
