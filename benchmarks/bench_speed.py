"""Training and inference throughput of our CvT against Hugging Face's, side by side.

``--model cvt_13`` (default) or any preset, e.g. ``cvt_micro`` (the search's small model, 1
channel, 10 classes): Hugging Face's `CvtForImageClassification` is configured to the same
layout. Both have the same parameter count (19,997,480 for CvT-13, 820,234 for cvt_micro) and
the same activation (GELU, as in the HF port). Steps alternate between the models in one process
so that machine load affects all alike; the ratio ours/HF is the result. A third runner,
``ours-aten``, is our model with its Linear layers on PyTorch's default MKL GEMM
(``set_linear_backend("aten")``) instead of oneDNN, to show how much of the gain is the GEMM
backend. Achieved model GFLOP/s count 2 FLOPs per analytic MAC, times 3 for a training step
(forward, input and weight gradients).

    python benchmarks/bench_speed.py --threads 2 --batch 16 --img-size 224 --steps 6
    python benchmarks/bench_speed.py --model cvt_micro --threads 2 --batch 128 --img-size 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import cvt_nas
from cvt_nas.model.linear import linear_backend, set_linear_backend


def hf_model(cfg: cvt_nas.CvTConfig) -> torch.nn.Module:
    """Hugging Face's CvT with the layout of ``cfg`` (scalar per-stage values only)."""
    from transformers import CvtConfig, CvtForImageClassification

    return CvtForImageClassification(CvtConfig(
        num_channels=cfg.in_chans, num_labels=cfg.num_classes,
        patch_sizes=list(cfg.embed_kernel), patch_stride=list(cfg.embed_stride),
        patch_padding=list(cfg.embed_padding), embed_dim=list(cfg.embed_dim),
        num_heads=list(cfg.num_heads), depth=list(cfg.depth),
        mlp_ratio=[float(m) for m in cfg.mlp_ratio], cls_token=list(cfg.cls_token),
        drop_path_rate=list(cfg.drop_path), stride_kv=list(cfg.kv_stride),
        kernel_qkv=list(cfg.qkv_kernel), qkv_bias=[cfg.qkv_bias] * cfg.num_stages,
    ))


def with_backend(fn: Callable[[], None], backend: str) -> Callable[[], None]:
    def step() -> None:
        before = linear_backend()
        set_linear_backend(backend)
        try:
            fn()
        finally:
            set_linear_backend(before)

    return step


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
    ap.add_argument("--model", default="cvt_13", help="a preset (cvt_13, cvt_micro, ...)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = cvt_nas.create_model(args.model, act="gelu", img_size=args.img_size)
    theirs = hf_model(ours.cfg)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_hf, (n_ours, n_hf)
    macs = cvt_nas.analytic_cost(ours.cfg).macs
    x = torch.randn(args.batch, ours.cfg.in_chans, args.img_size, args.img_size)
    y = torch.randint(0, ours.cfg.num_classes, (args.batch,))
    report: dict[str, object] = {"model": args.model, "params": n_ours, "macs": macs, "threads": args.threads,
                                 "batch": args.batch, "img_size": args.img_size,
                                 "torch": torch.__version__}
    for mode in ("train", "infer"):
        if mode == "train":
            fns = {"ours": train_step_fn(ours, x, y, False),
                   "ours-aten": with_backend(train_step_fn(ours, x, y, False), "aten"),
                   "hf": train_step_fn(theirs, x, y, True)}
        else:
            fns = {"ours": infer_fn(ours, x, False),
                   "ours-aten": with_backend(infer_fn(ours, x, False), "aten"),
                   "hf": infer_fn(theirs, x, True)}
        wall, cpu = alternate(fns, args.steps, args.warmup)
        ips = {k: args.batch / statistics.median(v) for k, v in wall.items()}
        cpu_s = {k: statistics.median(v) for k, v in cpu.items()}
        flop_per_img = 2 * macs * (3 if mode == "train" else 1)
        report[mode] = {
            **{f"{k}_img_s": round(v, 2) for k, v in ips.items()},
            **{f"{k}_gflop_s": round(v * flop_per_img / 1e9, 1) for k, v in ips.items()},
            **{f"{k}_cpu_s_per_img": round(v / args.batch, 4) for k, v in cpu_s.items()},
            "ratio_wall": round(ips["ours"] / ips["hf"], 3),
            "ratio_cpu": round(cpu_s["hf"] / cpu_s["ours"], 3),
            "ratio_wall_aten": round(ips["ours-aten"] / ips["hf"], 3),
        }
        if not args.json:
            runs = " | ".join(f"{k} {v:6.2f} img/s ({v * flop_per_img / 1e9:4.0f} GFLOP/s)"
                              for k, v in ips.items())
            print(f"{mode:5s}: {runs} | ours/HF {ips['ours'] / ips['hf']:.2f}x wall, "
                  f"{cpu_s['hf'] / cpu_s['ours']:.2f}x CPU time; ours-aten/HF "
                  f"{ips['ours-aten'] / ips['hf']:.2f}x wall", flush=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
