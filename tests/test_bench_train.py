"""The benchmarks run end to end on tiny models and report consistent figures.

In process (their main(argv)); only identities between the figures are checked, never
how fast anything ran: speed is what the benchmarks measure, not what tests assert.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

BENCH_TINY = ["--n-neurons", "64", "--n-input", "8", "--latent", "8", "--batch-sizes", "16"]


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch):
    """The benchmarks folder importable, as when a script there runs."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_gemm_shapes
    import bench_train
    import gpu_check

    return bench_train, bench_gemm_shapes, gpu_check


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


@pytest.mark.slow
def test_gpu_check_runs_every_step_and_writes_its_report(benchmarks, tmp_path):
    """The GPU check's steps at toy sizes on the CPU: every command line it runs is right
    and its report and README rows are written, before a GPU ever runs it."""
    gpu_check = benchmarks[2]
    grid = ["--precisions", "fp32", "--compile", "none"]  # batch 16: --tiny's default
    report = gpu_check.main([str(tmp_path), "--device", "cpu", "--tiny", *grid])
    steps = [report["cuda_tests"], report["no_sync"], report["bench_streaming"]]
    assert [s["rc"] for s in steps] == [0, 0, 0], [s["stderr"] for s in steps]
    cuda, no_sync = (re.findall(r"::(test_\w+)", s["stdout"]) for s in steps[:2])
    assert cuda and no_sync and all("wait" in n for n in no_sync)  # collected, not run
    (train,) = report["bench_train"].values()
    assert train["rc"] == 0 and [r["batch_size"] for r in train["rows"]] == [16]
    assert report["bench_streaming"]["summary"]["runs"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["device"] == "cpu"
    rows = (tmp_path / "readme_rows.md").read_text()
    assert "| fp32 | 16 | none |" in rows and "streamed / resident steps/s on cpu" in rows


def test_gpu_check_refuses_without_cuda_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the check would run")
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    last = "error: gpu_check needs a CUDA device; torch.cuda.is_available() is False"
    assert done.stderr.splitlines()[-1] == last  # (a broken driver may warn first)


@pytest.mark.slow
def test_bench_multiples_reports_consistent_step_ratios(benchmarks, tmp_path):
    import bench_multiples

    out = tmp_path / "multiples.json"
    args = ["--n-neurons", "64", "--n-input", "8", "--latent", "8", "--batch-size", "16",
            "--time-units", "2", "--multiples", "3", "--steps", "2", "--train-frames", "64",
            "--epochs", "1", "--json", str(out)]  # fmt: skip
    result = bench_multiples.main(args)
    assert json.loads(out.read_text())["step_seconds"] == result["step_seconds"]
    step = result["step_seconds"]
    assert result["multiples_step_ratio"] == step["multiples"] / step["one"]
    assert result["skips_vs_plain_step"] == step["skips"] / step["one"]
    assert result["multiples_target"] == pytest.approx(3 * 1.1)
