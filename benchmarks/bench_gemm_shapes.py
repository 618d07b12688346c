"""Each product of the model's wide layers through MKL and through oneDNN, in GFLOP/s.

This is the measurement behind latent_evolution/model/cpu_kernels.py: for the encoder's first layer
(N -> hidden, on the batch's rows) and the decoder's last (hidden -> N, on twice the rows:
prediction and reconstruction are decoded together), it times the forward, the input
gradient and the weight gradient through MKL with nn.Linear's weight layout (what plain
PyTorch runs) and through oneDNN with cpu_kernels.OneDNNLinear's layout and calls, the two
interleaved, beside bench_train's square-GEMM ceiling (the encoder's input gradient is
never needed, its input being data; it is shown for completeness). cpu_kernels.py's routing
was chosen on an AMD EPYC; run this on a new CPU before trusting it there:

    python benchmarks/bench_gemm_shapes.py --batch-sizes 32,256
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from bench_train import gemm_flops, timed

from latent_evolution.model import cpu_kernels

Product = Callable[[], torch.Tensor]


def products(d_in: int, d_out: int, rows: int) -> dict[str, tuple[Product, Product]]:
    """{product: (MKL call, oneDNN call)} for one layer, as nn.Linear and OneDNNLinear run it."""
    plain = torch.nn.Linear(d_in, d_out)
    ours = cpu_kernels.OneDNNLinear.from_linear(torch.nn.Linear(d_in, d_out))
    w, b = plain.weight.detach(), plain.bias.detach()
    w_ours = ours.weight.detach()
    x, g = torch.randn(rows, d_in), torch.randn(rows, d_out)
    ones = torch.ones(rows, 1)
    return {
        "forward": (
            lambda: torch.addmm(b, x, w.t()),
            lambda: cpu_kernels.onednn_linear(x, w_ours, b),
        ),
        "input grad": (
            lambda: g @ w,
            lambda: cpu_kernels.onednn_linear(g, w_ours.t(), None),
        ),
        "weight grad": (
            lambda: g.t() @ x,
            # stored transposed: the bias gradient comes with it, as in the train step
            (lambda: cpu_kernels.onednn_weight_grads(x, g, ones))
            if ours.transposed
            else (lambda: cpu_kernels.onednn_linear(g.t(), x.t(), None)),
        ),
    }


def gflops(call: Product, flops: int, repeats: int) -> float:
    call()  # warm-up: oneDNN builds its primitive on the first call
    return flops / timed(call, torch.device("cpu"), repeats) / 1e9


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-sizes", default="32,256,2048")
    p.add_argument("--n-neurons", type=int, default=13741)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if not cpu_kernels.ONEDNN_AVAILABLE:
        raise SystemExit("this PyTorch has no oneDNN: every product runs on MKL")

    ceiling = gemm_flops(torch.device("cpu"), "fp32") / 1e9
    print(f"square 2048 GEMM ceiling {ceiling:.0f} GFLOP/s, {torch.get_num_threads()} threads")
    rows_out = []
    for batch in map(int, args.batch_sizes.split(",")):
        layers = {"encoder": (args.n_neurons, args.hidden, batch)}
        layers["decoder"] = (args.hidden, args.n_neurons, 2 * batch)
        for layer, (d_in, d_out, rows) in layers.items():
            flops, repeats = 2 * rows * d_in * d_out, max(2, 512 // rows)
            for product, (mkl, onednn) in products(d_in, d_out, rows).items():
                rates = [
                    (gflops(mkl, flops, repeats), gflops(onednn, flops, repeats))
                    for _ in range(args.rounds)
                ]
                row = {"batch_size": batch, "layer": layer, "product": product, "rows": rows}
                row["mkl_gflops"] = statistics.median(r[0] for r in rates)
                row["onednn_gflops"] = statistics.median(r[1] for r in rates)
                rows_out.append(row)
                print(
                    f"batch {batch:>5} {layer:<8} {product:<12} {d_in:>6} -> {d_out:<6} "
                    f"x {rows:<5} MKL {row['mkl_gflops']:6.1f}  oneDNN {row['onednn_gflops']:6.1f}"
                    f"  GFLOP/s ({row['onednn_gflops'] / ceiling:.2f} of the ceiling)"
                )
    if args.json:
        args.json.write_text(json.dumps({"ceiling_gflops": ceiling, "rows": rows_out}, indent=2))
    return rows_out


if __name__ == "__main__":
    main()
