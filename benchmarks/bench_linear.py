"""CPU matrix-product rate of PyTorch's default Linear (MKL) against the oneDNN path, side by side.

For each Linear shape of CvT-13 at batch 16 (and a square 2048 GEMM as the machine's ceiling) it
times forward + backward (input and weight gradients, 3 GEMMs) of ``F.linear`` and of
``cvt_nas.model.linear.onednn_linear`` alternately in one process and prints GFLOP/s and the ratio.
With ``--model NAME`` it instead times whole training steps (forward, backward, AdamW) of that
preset with its Linear layers on each backend.

    python benchmarks/bench_linear.py --threads 2
    python benchmarks/bench_linear.py --threads 2 --model cvt_micro --batch 128 --img-size 32
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_speed import alternate  # this folder is on sys.path when run as a script

import cvt_nas
from cvt_nas.model.linear import onednn_linear, set_linear_backend

# (tokens per image, in, out) of CvT-13's Linear layers at 224 px: q/k/v/out projections (q and
# the block's tokens; k/v see a quarter) and MLP layers per stage. Stages 1-2 have 56x56 and
# 28x28 tokens, stage 3 14x14 plus the cls token.
SHAPES = [(3136, 64, 64), (3136, 64, 256), (3136, 256, 64), (784, 192, 192), (784, 192, 768),
          (784, 768, 192), (197, 384, 384), (197, 384, 1536), (197, 1536, 384)]


def fwd_bwd(fn: Callable, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
            g: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        torch.autograd.grad(fn(x, w, b), (x, w, b), g)

    return step


def per_second(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Calls per second of each function, timed alternately (the loop of `bench_speed`)."""
    wall, _ = alternate(fns, repeats, warmup=2)
    return {k: 1.0 / statistics.median(v) for k, v in wall.items()}


def model_steps(name: str, batch: int, img_size: int, repeats: int) -> None:
    model = cvt_nas.create_model(name, img_size=img_size, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, model.cfg.in_chans, img_size, img_size)
    y = torch.randint(0, 10, (batch,))

    def step(backend: str) -> Callable[[], None]:
        def run() -> None:
            set_linear_backend(backend)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    r = {k: batch * v for k, v in per_second({"aten": step("aten"), "onednn": step("onednn")},
                                               repeats).items()}
    print(f"{name} training step, batch {batch}, {img_size} px: F.linear {r['aten']:.0f} img/s, "
          f"oneDNN {r['onednn']:.0f} img/s, ratio {r['onednn'] / r['aten']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", help="time whole training steps of this preset instead")
    ap.add_argument("--img-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        model_steps(args.model, args.batch, args.img_size, max(args.repeats, 10))
        return
    print(f"{'tokens x in -> out':<22} {'F.linear GFLOP/s':>17} {'oneDNN GFLOP/s':>15} {'ratio':>7}")
    shapes = [(args.batch * n, k, m) for n, k, m in SHAPES] + [(2048, 2048, 2048)]
    for m_rows, k, n in shapes:
        x = torch.randn(m_rows, k, requires_grad=True)
        w = torch.randn(n, k, requires_grad=True)
        b = torch.randn(n, requires_grad=True)
        g = torch.randn(m_rows, n)
        flops = 3 * 2 * m_rows * k * n
        calls = per_second({"aten": fwd_bwd(F.linear, x, w, b, g),
                            "onednn": fwd_bwd(onednn_linear, x, w, b, g)}, args.repeats)
        r = {k: flops * v / 1e9 for k, v in calls.items()}
        print(f"{f'{m_rows} x {k} -> {n}':<22} {r['aten']:>17.0f} {r['onednn']:>15.0f} "
              f"{r['onednn'] / r['aten']:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
