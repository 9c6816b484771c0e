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


def alternate(fns: dict[str, Callable[[], None]], steps: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


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
        times = alternate(fns, args.steps, args.warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        ips = {k: args.batch / v for k, v in med.items()}
        report[mode] = {"ours_img_s": round(ips["ours"], 2), "hf_img_s": round(ips["hf"], 2),
                        "ratio": round(ips["ours"] / ips["hf"], 3)}
        if not args.json:
            print(f"{mode:5s}: ours {ips['ours']:7.2f} img/s | HF {ips['hf']:7.2f} img/s | "
                  f"ratio ours/HF {ips['ours'] / ips['hf']:.2f}x", flush=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
