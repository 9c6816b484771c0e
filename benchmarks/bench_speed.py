"""Training and inference throughput of our CvT-13 against Hugging Face's, side by side.

Both models have the same parameter count (19,997,480) and the same activation (GELU, as in
the HF port). Steps alternate between the two models in one process so that machine load
affects both alike; the ratio ours/HF is the result.

    python benchmarks/bench_speed.py --threads 2 --batch 16 --img-size 224 --steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import cvt_nas


def hf_cvt13(num_classes: int) -> torch.nn.Module:
    from transformers import CvtConfig, CvtForImageClassification

    return CvtForImageClassification(CvtConfig(num_labels=num_classes))


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  hf: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        out = model(pixel_values=x).logits if hf else model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def infer_fn(model: torch.nn.Module, x: torch.Tensor, hf: bool) -> Callable[[], None]:
    def step() -> None:
        model.eval()
        with torch.inference_mode():
            model(pixel_values=x) if hf else model(x)

    return step


def alternate(fns: dict[str, Callable[[], None]], steps: int,
              warmup: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per step of each function, alternating between them.

    CPU time (all threads of this process) is the robust number on a shared machine: other
    processes stretch wall time but not the CPU work our step needs.
    """
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = cvt_nas.create_model("cvt_13", act="gelu", img_size=args.img_size)
    theirs = hf_cvt13(1000)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_hf, (n_ours, n_hf)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch,))
    report: dict[str, object] = {"params": n_ours, "threads": args.threads, "batch": args.batch,
                                 "img_size": args.img_size, "torch": torch.__version__}
    for mode in ("train", "infer"):
        if mode == "train":
            fns = {"ours": train_step_fn(ours, x, y, False), "hf": train_step_fn(theirs, x, y, True)}
        else:
            fns = {"ours": infer_fn(ours, x, False), "hf": infer_fn(theirs, x, True)}
        wall, cpu = alternate(fns, args.steps, args.warmup)
        ips = {k: args.batch / statistics.median(v) for k, v in wall.items()}
        cpu_s = {k: statistics.median(v) for k, v in cpu.items()}
        report[mode] = {"ours_img_s": round(ips["ours"], 2), "hf_img_s": round(ips["hf"], 2),
                        "ratio_wall": round(ips["ours"] / ips["hf"], 3),
                        "ours_cpu_s_per_img": round(cpu_s["ours"] / args.batch, 4),
                        "hf_cpu_s_per_img": round(cpu_s["hf"] / args.batch, 4),
                        "ratio_cpu": round(cpu_s["hf"] / cpu_s["ours"], 3)}
        if not args.json:
            print(f"{mode:5s}: ours {ips['ours']:7.2f} img/s | HF {ips['hf']:7.2f} img/s | "
                  f"ratio ours/HF {ips['ours'] / ips['hf']:.2f}x wall, "
                  f"{cpu_s['hf'] / cpu_s['ours']:.2f}x CPU time", flush=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
