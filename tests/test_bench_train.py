"""The benchmarks run end to end on tiny models and report consistent figures."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_script

TINY = ["--n-neurons", "64", "--n-input", "8", "--latent", "8", "--batch-sizes", "16"]


def run_benchmark(script: str, *args: str) -> None:
    run_script(f"benchmarks/{script}", *args)


def test_bench_train_reports_roofline_floor_split_and_library_ratio(tmp_path):
    out = tmp_path / "bench.json"
    args = [*TINY, "--compile", "none", "--steps", "2", "--epochs", "1", "--json", str(out)]
    run_benchmark("bench_train.py", *args)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch_size"] == 16 and row["compile"] == "none" and not row["compiled"]
    assert row["gemm_tflops"] > 0 and row["steps_per_s"] > 0
    # one timed epoch: its FLOP/s over the ceiling measured beside it
    assert row["roofline_fraction"] == pytest.approx(row["train_step_tflops"] / row["gemm_tflops"])
    assert row["samples_per_s"] == pytest.approx(16 * row["steps_per_s"])
    # the loop's epoch is its train steps plus the rest, measured over the same epochs
    assert row["loop_vs_steps"] == pytest.approx(1 / (1 - row["overhead_pct"] / 100))
    assert row["loop_vs_steps"] > 1 and row["steps_vs_bare"] > 0
    # the floor replays every matmul of a step, forward and backward, and nothing else
    assert row["floor_flops_per_step"] == row["flops_per_step"]
    assert row["steps_vs_floor"] > 1
    assert row["floor_fraction"] == pytest.approx(row["roofline_fraction"] * row["steps_vs_floor"])
    assert row["mkl_only_vs_ours"] > 0 and row["checkpoint_s"] > 0


def test_bench_gemm_shapes_times_every_product_of_both_wide_layers(tmp_path):
    out = tmp_path / "gemm.json"
    args = ["--n-neurons", "300", "--hidden", "16", "--batch-sizes", "4,8", "--rounds", "1"]
    run_benchmark("bench_gemm_shapes.py", *args, "--json", str(out))
    report = json.loads(out.read_text())
    assert report["ceiling_gflops"] > 0
    rows = {(r["batch_size"], r["layer"], r["product"], r["rows"]) for r in report["rows"]}
    products = ("forward", "input grad", "weight grad")
    assert rows == {
        (batch, layer, product, batch * (2 if layer == "decoder" else 1))
        for batch in (4, 8)
        for layer in ("encoder", "decoder")
        for product in products
    }
    assert all(r["mkl_gflops"] > 0 and r["onednn_gflops"] > 0 for r in report["rows"])
