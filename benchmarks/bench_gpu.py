"""The GPU targets of the trial step engine, each measured side by side in one run, as JSON.

One part per call (``--part NAME``), so that scripts/gpu_check.sh can give each part its own time
limit; ``--merge`` joins the parts' JSON files into one report with date and device.

Parts and their targets (from the engine issue):

* ``env``: device, versions, which optional packages import, CUDA start-up time.
* ``steps``: a cvt_micro training step on synthetic data, eager vs CUDA graph, fp32 / bf16, at
  batch 128 and 512 (the engine alone, no data path).
* ``trial``: real cvt_micro trials on Fashion-MNIST, batch 128: graph / eager, fp32 / auto (bf16).
  Target: >= 50,000 training img/s.
* ``search``: the 10-trial main search (``cvt-nas search search_spaces/cvt_micro.yaml``), wall
  clock of the whole command. Target: <= 15 s. Needs optuna (carried wheels).
* ``cvt13``: CvT-13 at 224 px, batch 128, bf16 autocast, fused AdamW: ours (eager, graph) vs
  Hugging Face's, training and inference, and peak memory. Targets: training >= 2x HF and
  >= 4,000 img/s, inference >= 2x HF, memory <= HF's.
* ``memory``: calibrate the memory model (cvt_micro, fp32 and bf16), store it, and check its
  estimates against measured peaks of other models.
* ``packing``: K cvt_micro graphs replayed from K threads on K streams (the mechanism alone,
  with a watchdog), then K real trials through `run_packed` against one trial alone.
  Target: aggregate >= 3x one trial's img/s.
* ``robust``: what must keep working on CUDA: fp16 + GradScaler, channels-last, an OOM trial
  (recorded, memory returned, the next trial runs), divergence (status and step), no host
  synchronisation inside the step loop (``torch.cuda.set_sync_debug_mode("error")``), and a
  224 px image-folder trial with the paper recipe.
* ``cpu``: bench_speed.py on 2 threads of this machine's CPU (another CPU kind): CvT-13 and
  cvt_micro against Hugging Face's. Targets: training >= 1.7x and >= 1.5x.

    python benchmarks/bench_gpu.py --part trial --out /tmp/parts
    python benchmarks/bench_gpu.py --merge /tmp/parts --out report.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import cvt_nas
from cvt_nas.model.config import CvTConfig
from cvt_nas.training import engine, memory
from cvt_nas.training.config import TrainConfig, get_recipe
from cvt_nas.training.trainer import make_optimizer, run_trial

ROOT = Path(__file__).resolve().parent.parent
MICRO = cvt_nas.get_config("cvt_micro")
DEV = torch.device("cuda")


def micro_train(**overrides: Any) -> TrainConfig:
    """The main search's training settings (reduced recipe, 32 px Fashion-MNIST) on CUDA."""
    base: dict[str, Any] = dict(device="cuda", img_size=32, epochs=2, train_subset=16000)
    return TrainConfig(**{**base, **overrides})


def timed_steps(step: Callable[[], None], n: int, warmup: int = 3) -> float:
    """Seconds per call of ``step`` on the GPU (CUDA events over ``n`` calls after warm-up)."""
    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / n


def train_step(cfg: CvTConfig, batch: int, precision: str, graph: bool,
               fmt: torch.memory_format = torch.contiguous_format
               ) -> tuple[Callable[[], None], engine.TrainStep]:
    """An engine training step of ``CvT(cfg)`` on a fixed synthetic batch."""
    model = cvt_nas.CvT(cfg).to(DEV).to(memory_format=fmt)
    opt = engine.fused_adamw(make_optimizer(model, 1e-3, 0.05), DEV)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    step = engine.TrainStep(model, opt, torch.nn.CrossEntropyLoss(), scaler,
                            engine.AMP_DTYPES[precision], DEV, None, graph,
                            engine.CUDA_CHECK_EVERY)
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=DEV)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, cfg.num_classes, (batch,), device=DEV)
    model.train()
    step.begin_epoch()
    return (lambda: step(x, y, 1e-3)), step


# -- parts -------------------------------------------------------------------------------------


def part_env() -> dict[str, Any]:
    start = time.perf_counter()
    torch.cuda.init()
    torch.zeros(1, device=DEV)
    init_s = time.perf_counter() - start
    free, total = torch.cuda.mem_get_info()
    mods = ("optuna", "fvcore", "ray", "transformers", "timm", "pandas", "pyarrow", "matplotlib")
    return {
        "device": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "cuda_init_s": round(init_s, 2), "free_gib": round(free / 2**30, 1),
        "total_gib": round(total / 2**30, 1), "cpus": os.cpu_count(),
        "imports": {m: importlib.util.find_spec(m) is not None for m in mods},
    }


def part_steps() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in (128, 512):
        for precision in ("fp32", "bf16"):
            for graph in (False, True):
                start = time.perf_counter()
                fn, step = train_step(MICRO, batch, precision, graph)
                fn()  # the capture, when graph
                setup = time.perf_counter() - start
                sec = timed_steps(fn, n=200 if graph else 50)
                out[f"b{batch}_{precision}_{'graph' if graph else 'eager'}"] = {
                    "img_s": round(batch / sec), "setup_s": round(setup, 2),
                    "capture_s": round(step.graphed.capture_s, 2),
                    "fallback": step.graphed.fallback}
    return out


def part_trial() -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = {"graph_auto": dict(engine="graph", precision="auto"),
                "graph_fp32": dict(engine="graph", precision="fp32"),
                "eager_fp32": dict(engine="eager", precision="fp32"),
                "eager_auto": dict(engine="eager", precision="auto")}
    run_trial(MICRO, micro_train(epochs=1, train_subset=2048))  # process and CUDA warm-up
    for name, kw in variants.items():
        r = run_trial(MICRO, micro_train(**kw))
        last = r.history[-1] if r.history else {}
        out[name] = {"status": r.status, "error": r.error, "precision": r.precision,
                     "engine": r.engine, "wall_s": round(r.wall_time_s, 2),
                     "epoch_img_s": [round(h["images_per_s"]) for h in r.history],
                     "steady_img_s": round(last.get("images_per_s") or 0),
                     "val_top1": r.val_top1}
    best = max(v["steady_img_s"] for v in out.values())
    out["target_img_s"] = 50_000
    out["pass"] = best >= 50_000
    return out


def _main_search(tmp: str, name: str, *extra: str, timeout: float = 240) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "cvt_nas.cli", "search", "search_spaces/cvt_micro.yaml",
           "--out", f"{tmp}/{name}", "--storage", f"sqlite:///{tmp}/{name}.db", "--quiet", *extra]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # a hung run must not cost the part its report
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return {"wall_s": None, "returncode": None, "timed_out_s": timeout,
                "stderr_tail": err[-1500:], "trials": []}
    wall = time.perf_counter() - start
    trials = []
    csv = Path(tmp, name, "trials.csv")
    if csv.is_file():
        import pandas as pd

        frame = pd.read_csv(csv)
        cols = [c for c in ("trial", "status", "val_top1", "wall_time_s", "images_per_s",
                            "co_tenants", "retried_alone") if c in frame.columns]
        trials = frame[cols].to_dict("records")
    return {"wall_s": round(wall, 2), "returncode": proc.returncode,
            "stderr_tail": proc.stderr[-1500:], "trials": trials}


def part_search() -> dict[str, Any]:
    """The README's main search as a user runs it, then the same with ``--pack 4`` (its own
    study): the target is on the first; the second shows what packing gives the command."""
    if importlib.util.find_spec("optuna") is None:
        return {"skipped": "optuna is not importable: carry the wheels (scripts/gpu/prepare.sh)",
                "pass": None}
    with tempfile.TemporaryDirectory() as tmp:
        out = _main_search(tmp, "plain", timeout=45)
        # threads capturing CUDA graphs side by side once hung (issue 13): bounded apart
        out["packed"] = _main_search(tmp, "pack4", "--pack", "4", timeout=30)
    packed_ok = out["returncode"] == 0 and out["packed"]["returncode"] == 0
    packed_ok = packed_ok and out["wall_s"] is not None and out["packed"]["wall_s"] is not None
    out["packed"]["speedup"] = (round(out["wall_s"] / max(out["packed"]["wall_s"], 1e-9), 2)
                                if packed_ok else None)
    out["target_s"] = 15
    out["pass"] = out["returncode"] == 0 and out["wall_s"] is not None and out["wall_s"] <= 15
    return out


def part_cvt13(batch: int = 128, steps: int = 10) -> dict[str, Any]:
    from transformers import CvtConfig, CvtForImageClassification

    torch.backends.cudnn.benchmark = True
    out: dict[str, Any] = {"batch": batch, "img_size": 224, "precision": "bf16"}
    cfg = cvt_nas.get_config("cvt_13")
    cl = torch.channels_last

    def measure(name: str, make: Callable[[], tuple[Callable[[], None], Any]]) -> None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn, keep = make()
        sec = timed_steps(fn, steps)
        out[name] = {"img_s": round(batch / sec),
                     "peak_gib": round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)}
        del fn, keep

    measure("train_ours_eager", lambda: train_step(cfg, batch, "bf16", False, cl))
    measure("train_ours_graph", lambda: train_step(cfg, batch, "bf16", True, cl))

    def hf_train() -> tuple[Callable[[], None], Any]:
        model = CvtForImageClassification(CvtConfig(num_labels=1000)).to(DEV).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        x = torch.randn(batch, 3, 224, 224, device=DEV)
        y = torch.randint(0, 1000, (batch,), device=DEV)

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step, (model, opt)

    measure("train_hf", hf_train)

    def infer(hf: bool, graph: bool) -> Callable[[], tuple[Callable[[], None], Any]]:
        def make() -> tuple[Callable[[], None], Any]:
            if hf:
                model: Any = CvtForImageClassification(CvtConfig(num_labels=1000)).to(DEV)
            else:
                model = cvt_nas.CvT(cfg).to(DEV).to(memory_format=cl)
            model.eval()
            x = torch.randn(2 * batch, 3, 224, 224, device=DEV)
            y = torch.zeros(2 * batch, dtype=torch.long, device=DEV)
            if hf:
                def run() -> None:
                    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                        model(pixel_values=x)
                return run, model
            ev = engine.EvalStep(model, torch.bfloat16, DEV, 5, graph)
            xc = x.contiguous(memory_format=cl)

            def run_ours() -> None:
                with torch.inference_mode():
                    ev([(xc, y)])
            return run_ours, (model, ev)
        return make

    measure("infer_ours_eager", infer(False, False))
    measure("infer_ours_graph", infer(False, True))
    measure("infer_hf", infer(True, False))
    for mode in ("train", "infer"):
        best = max(out[f"{mode}_ours_eager"]["img_s"], out[f"{mode}_ours_graph"]["img_s"])
        out[f"{mode}_ratio_vs_hf"] = round(best / out[f"{mode}_hf"]["img_s"], 2)
    tr = max(out["train_ours_eager"]["img_s"], out["train_ours_graph"]["img_s"])
    out["pass"] = {
        "train_2x_hf": out["train_ratio_vs_hf"] >= 2.0, "train_4000_img_s": tr >= 4000,
        "infer_2x_hf": out["infer_ratio_vs_hf"] >= 2.0,
        "memory_le_hf": min(out["train_ours_eager"]["peak_gib"],
                            out["train_ours_graph"]["peak_gib"]) <= out["train_hf"]["peak_gib"],
    }
    return out


def part_memory(out_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name = torch.cuda.get_device_name()
    for precision in ("fp32", "bf16"):
        cal = memory.calibrate(
            MICRO, name, precision,
            lambda b, p=precision: memory.measure_cuda_peak(MICRO, b, p, DEV),  # type: ignore[misc]
            batches=(128, 512, 1024))
        memory.save_calibration(cal)
        memory.save_calibration(cal, out_dir)
        checks = {}
        for label, cfg, batch in (("cvt_tiny_b256", cvt_nas.get_config("cvt_tiny"), 256),
                                  ("cvt_13_224_b32", cvt_nas.get_config("cvt_13"), 32)):
            measured = memory.measure_cuda_peak(cfg, batch, precision, DEV)
            est = memory.estimate(cfg, batch, cal, eval_batch_size=0).total
            checks[label] = {"measured_mib": round(measured / 2**20),
                             "estimate_mib": round(est / 2**20),
                             "error": round(est / measured - 1, 3)}
        out[precision] = {"bytes_per_element": round(cal.bytes_per_element, 3),
                          "overhead_mib": round(cal.overhead_bytes / 2**20), "checks": checks}
    return out


def part_packing(max_k: int = 8, watchdog_s: float = 60.0) -> dict[str, Any]:
    from cvt_nas.training.packing import run_packed, trial_memory

    out: dict[str, Any] = {}
    # 1. the mechanism alone: K captured steps replayed from K threads, each on its own stream
    for k in (1, 2, max_k):
        out[f"streams_k{k}"] = _replay_concurrently(k, 300, watchdog_s)
        if out[f"streams_k{k}"]["hung"]:
            out["pass"] = False
            return out  # a hung stream leaves the device unusable for the rest of this part
    # 2. real trials: one alone, then K packed
    cal = memory.load_calibration(torch.cuda.get_device_name(), "bf16")
    tcfg = micro_train(precision="auto")
    est = trial_memory(MICRO, tcfg, cal).total
    free = torch.cuda.mem_get_info()[0]
    k = memory.pack_count(free, est, max_k)
    run_trial(MICRO, micro_train(epochs=1, train_subset=2048))  # warm-up
    start = time.perf_counter()
    alone = run_trial(MICRO, tcfg)
    alone_s = time.perf_counter() - start
    images = tcfg.epochs * (tcfg.train_subset or 0)
    jobs = [(MICRO, tcfg.replace(seed=i)) for i in range(k)]
    start = time.perf_counter()
    packed = run_packed(jobs, max_k=k, calibration=cal)
    packed_s = time.perf_counter() - start
    alone_rate, packed_rate = images / alone_s, k * images / packed_s
    out["trials"] = {
        "k": k, "estimate_mib": round(est / 2**20), "free_gib": round(free / 2**30, 1),
        "alone": {"status": alone.status, "img_s_wall": round(alone_rate),
                  "train_img_s": round(alone.images_per_s or 0)},
        "packed": {"statuses": [p.result.status if p.result else None for p in packed],
                   "retried": sum(p.retried_alone for p in packed),
                   "img_s_wall": round(packed_rate)},
        "ratio": round(packed_rate / alone_rate, 2),
    }
    out["pass"] = packed_rate >= 3 * alone_rate
    return out


def _replay_concurrently(k: int, n: int, watchdog_s: float) -> dict[str, Any]:
    """Aggregate img/s of ``k`` captured cvt_micro steps (batch 128, bf16), each replayed ``n``
    times from its own thread on its own stream; ``hung`` if any thread outlives the watchdog."""
    steps = []
    for _ in range(k):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            fn, _step = train_step(MICRO, 128, "bf16", True)
            fn()  # capture
        steps.append((stream, fn))
    torch.cuda.synchronize()
    done = [0] * k

    def worker(i: int) -> None:
        stream, fn = steps[i]
        with torch.cuda.stream(stream):
            for _ in range(n):
                fn()
                done[i] += 1
            stream.synchronize()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(k)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, watchdog_s - (time.perf_counter() - start)))
    wall = time.perf_counter() - start
    hung = any(t.is_alive() for t in threads)
    return {"img_s": None if hung else round(k * n * 128 / wall), "hung": hung,
            "steps_done": done}


def part_robust() -> dict[str, Any]:
    out: dict[str, Any] = {}
    small: dict[str, Any] = dict(epochs=1, train_subset=4096)
    variants: dict[str, dict[str, Any]] = {
        "fp16_gradscaler": dict(precision="fp16"),
        "channels_last_graph": dict(channels_last=True),
        "mixup_graph_bf16": dict(mixup=0.8, cutmix=1.0, precision="bf16"),
    }
    for name, kw in variants.items():
        r = run_trial(MICRO, micro_train(**small, **kw))
        out[name] = {"status": r.status, "engine": r.engine, "precision": r.precision,
                     "error": r.error, "img_s": round(r.images_per_s or 0)}
    r = run_trial(MICRO, micro_train(**small, lr=1e6, warmup_epochs=0.0))
    out["divergence"] = {"status": r.status, "error": r.error}
    # out of memory: recorded, memory returned, the next trial runs
    free_before = torch.cuda.mem_get_info()[0]
    huge = run_trial(cvt_nas.get_config("cvt_13"),  # ~300 MiB of activations an image
                     micro_train(epochs=1, train_subset=2048, img_size=384, batch_size=1024,
                                 channels="repeat"))
    free_after = torch.cuda.mem_get_info()[0]
    nxt = run_trial(MICRO, micro_train(**small))
    out["oom"] = {"status": huge.status, "error": (huge.error or "")[:200],
                  "free_gib_before": round(free_before / 2**30, 1),
                  "free_gib_after": round(free_after / 2**30, 1), "next_status": nxt.status}
    out["no_sync_in_steps"] = _sync_check()
    out["imagefolder_paper_224"] = _folder_trial()
    out["pass"] = (out["fp16_gradscaler"]["status"] == "complete"
                   and out["channels_last_graph"]["status"] == "complete"
                   and out["divergence"]["status"] == "diverged" and huge.status == "oom"
                   and nxt.status == "complete" and out["no_sync_in_steps"].get("ok") is True
                   and out["imagefolder_paper_224"].get("status") == "complete")
    return out


def _sync_check() -> dict[str, Any]:
    """Run 120 real training steps (data path included) with synchronising calls made errors."""
    from cvt_nas.training.data import TrialData

    tcfg = micro_train(train_subset=128 * 130)
    data = TrialData(tcfg, DEV)
    results = {}
    for graph in (False, True):
        fn, step = train_step(MICRO, 128, "bf16", graph)
        batches = data.train_batches(1, 0)
        x, y = next(batches)  # the epoch's permutation is copied to the device here (once)
        step(x, y, 1e-3)  # capture (synchronises the device once)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for i, (x, y) in enumerate(batches):
                step(x, y, 1e-3)
                if i == 120:
                    break
            results["graph" if graph else "eager"] = "ok"
        except RuntimeError as exc:
            results["graph" if graph else "eager"] = f"synchronised: {str(exc)[:300]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    results["ok"] = all(v == "ok" for v in results.values())  # type: ignore[assignment]
    return results


def _folder_trial() -> dict[str, Any]:
    """One epoch of the paper recipe (fp16, mixup, RandAugment) on a tiny 224 px image folder."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for split, n in (("train", 48), ("val", 16)):
            for c in ("a", "b"):
                folder = Path(tmp, split, c)
                folder.mkdir(parents=True)
                for i in range(n // 2):
                    pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.jpg")
        tcfg = get_recipe("paper", dataset=f"imagefolder:{tmp}", epochs=1, batch_size=16,
                          device="cuda", val_fraction=0.25, num_workers=2)
        r = run_trial(cvt_nas.get_config("cvt_13"), tcfg)
    return {"status": r.status, "engine": r.engine, "precision": r.precision, "error": r.error}


def part_cpu() -> dict[str, Any]:
    """Item 4 on this machine's CPU (another CPU kind): bench_speed.py on 2 threads, CvT-13 and
    cvt_micro against Hugging Face's, alternating steps in one process."""
    from cvt_nas.common.proc import cpu_name

    out: dict[str, Any] = {"cpu": cpu_name()}
    runs = {"cvt_13": ["--batch", "16", "--img-size", "224", "--steps", "3", "--warmup", "1"],
            "cvt_micro": ["--model", "cvt_micro", "--batch", "128", "--img-size", "32",
                          "--steps", "8", "--warmup", "2"]}
    for name, extra in runs.items():
        cmd = [sys.executable, "benchmarks/bench_speed.py", "--threads", "2", "--json", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
        out[name] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                     else {"error": proc.stderr[-800:]})
    ratio = lambda name, mode: out[name].get(mode, {}).get("ratio_wall", 0)  # noqa: E731
    out["pass"] = {"cvt_13_train_1.7x": ratio("cvt_13", "train") >= 1.7,
                   "cvt_micro_train_1.5x": ratio("cvt_micro", "train") >= 1.5}
    return out


PARTS: dict[str, Callable[..., dict[str, Any]]] = {
    "env": part_env, "steps": part_steps, "trial": part_trial, "search": part_search,
    "cvt13": part_cvt13, "memory": part_memory, "packing": part_packing, "robust": part_robust,
    "cpu": part_cpu,
}


def merge(parts_dir: Path) -> dict[str, Any]:
    """One report of every part's JSON (or why it is missing), with date and device."""
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds")}
    for name in PARTS:
        path = parts_dir / f"{name}.json"
        report[name] = (json.loads(path.read_text()) if path.is_file()
                        else {"missing": "no output: timed out or crashed (see the log)"})
    env = report.get("env", {})
    report["device"] = env.get("device")
    report["summary"] = {name: report[name].get("pass", "missing" if "missing" in report[name]
                                                 else None) for name in PARTS if name != "env"}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=list(PARTS))
    ap.add_argument("--merge", type=Path, metavar="DIR", help="join DIR/*.json into --out")
    ap.add_argument("--out", type=Path, required=True, help="parts: a folder; merge: a file")
    args = ap.parse_args()
    if args.merge is not None:
        args.out.write_text(json.dumps(merge(args.merge), indent=1, default=str) + "\n")
        return
    if args.part is None:
        ap.error("give --part NAME or --merge DIR")
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py: CUDA is not available here; run it on a GPU machine")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fn = PARTS[args.part]
    result = fn(args.out) if args.part == "memory" else fn()
    result["part_wall_s"] = round(time.perf_counter() - start, 1)
    (args.out / f"{args.part}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({args.part: result.get("pass"), "wall_s": result["part_wall_s"]}),
          flush=True)
    os._exit(0)  # a hung stream (packing) must not hold the interpreter's shutdown


if __name__ == "__main__":
    main()
