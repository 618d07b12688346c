"""The benchmarks run end to end on tiny models and report consistent figures.

In process (their main(argv)); only identities between the figures are checked, never
how fast anything ran: speed is what the benchmarks measure, not what tests assert.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT

BENCH_TINY = ["--n-neurons", "64", "--n-input", "8", "--latent", "8", "--batch-sizes", "16"]


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch):
    """The benchmarks folder importable, as when a script there runs."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_gemm_shapes
    import bench_train

    return bench_train, bench_gemm_shapes


@pytest.mark.slow
def test_bench_train_reports_roofline_floor_split_and_kernel_ratio(benchmarks, tmp_path):
    out = tmp_path / "bench.json"
    epoch = ["--steps", "2", "--train-frames", "32"]  # 2 steps of 16 a pass
    args = [*BENCH_TINY, *epoch, "--compile", "none", "--epochs", "1", "--json", str(out)]
    benchmarks[0].main(args)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch_size"] == 16 and row["compile"] == "none" and not row["compiled"]
    # one timed epoch: its FLOP/s over the ceiling measured beside it
    assert row["roofline_fraction"] == pytest.approx(row["train_step_tflops"] / row["gemm_tflops"])
    assert row["samples_per_s"] == pytest.approx(16 * row["steps_per_s"])
    # the loop's epoch is its train steps plus the rest, measured over the same epochs
    assert row["loop_vs_steps"] == pytest.approx(1 / (1 - row["overhead_pct"] / 100))
    # the floor replays every matmul of a step, forward and backward, and nothing else
    assert row["floor_flops_per_step"] == row["flops_per_step"]
    assert row["floor_fraction"] == pytest.approx(row["roofline_fraction"] * row["steps_vs_floor"])
    # every comparison was measured (on the CPU: the plain-torch kernels too)
    measured = ("steps_vs_bare", "torch_kernels_vs_ours", "checkpoint_s", "gemm_tflops")
    assert all(row[key] is not None for key in measured), row


@pytest.mark.slow
def test_bench_gemm_shapes_times_every_product_of_both_wide_layers(benchmarks, tmp_path):
    out = tmp_path / "gemm.json"
    args = ["--n-neurons", "300", "--hidden", "16", "--batch-sizes", "4,8", "--rounds", "1"]
    benchmarks[1].main([*args, "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {(r["batch_size"], r["layer"], r["product"], r["rows"]) for r in report["rows"]}
    products = ("forward", "input grad", "weight grad")
    assert rows == {
        (batch, layer, product, batch * (2 if layer == "decoder" else 1))
        for batch in (4, 8)
        for layer in ("encoder", "decoder")
        for product in products
    }
    keys = ("mkl_gflops", "onednn_gflops")
    assert all(r[k] is not None for r in report["rows"] for k in keys)
