"""`revsnn bench`: the commands run and report what they promise (numbers are never asserted as timings)."""

import json
import statistics

import torch
from typer.testing import CliRunner

from revsnn.cli.main import app

runner = CliRunner()


def test_bench_memory_json_rows_and_plot(tmp_path):
    plot = tmp_path / "mem.png"
    result = runner.invoke(app, ["bench", "memory", "--models", "revsresnet-digits", "--depths", "1,2",
                                 "--time-steps", "2", "--batch-size", "1", "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["variant"] for r in rows} == {"reversible", "reversible-recompute", "reversible-chunked", "plain",
                                            "checkpoint"}
    keys = ("retained", "peak", "saved", "neuron_state", "other", "transient")
    for r in rows:
        assert {"model", "variant", "depth", "time_steps", "batch_sizes", "method"} <= set(r)
        assert {f"{k}_per_sample" for k in keys} <= set(r)
        # both are slopes between two batch sizes, so a peak below retained is possible: only positivity
        assert r["peak_per_sample"] > 0 and r["retained_per_sample"] > 0
        assert r["transient_per_sample"] == r["peak_per_sample"] - r["retained_per_sample"]
        assert len(r["peak_at_batch_sizes"]) == 2 and min(r["peak_at_batch_sizes"]) > 0
    by = {(r["variant"], r["depth"]): r for r in rows}
    # Memory behaviour by the allocator, not timing: flat for the reversible model, growing for the twin.
    for key in ("retained_per_sample", "peak_per_sample"):
        for variant in ("reversible", "reversible-recompute", "reversible-chunked"):
            assert abs(by[(variant, 19)][key] / by[(variant, 11)][key] - 1) <= 0.05, (variant, key)
        assert by[("plain", 11)][key] < by[("plain", 19)][key]
        assert by[("reversible-recompute", 19)][key] < by[("reversible", 19)][key] < by[("plain", 19)][key]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_train_speed_rows():
    threads = torch.get_num_threads()
    result = runner.invoke(app, ["bench", "train-speed", "--batch-size", "4", "--time-steps", "1", "--repeats", "1",
                                 "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    rows = json.loads(result.output)
    assert ("pararevsnn-digits (reversible)", "revsresnet-digits (reversible)") in {(r["a"], r["b"]) for r in rows}
    for r in rows:
        assert r["ratio"] == r["median_a_s"] / r["median_b_s"] and r["repeats"] == 1 and r["threads"] == 1
        assert r["cpu_ratio"] == r["median_cpu_a_s"] / r["median_cpu_b_s"]


def test_bench_bad_input():
    for args, message in [(["bench", "memory", "--models", "nope"], "Unknown model"),
                          (["bench", "memory", "--plot", "/no/such/dir/x.png"], "does not exist"),
                          (["bench", "memory", "--plot", "x.jpg"], ".png"),
                          (["bench", "peers", "--threads", "0"], "--threads"),
                          (["bench", "train-speed", "--threads", "0"], "--threads"),
                          (["bench", "train-speed", "--device", "cuda"] , "cuda")]:
        result = runner.invoke(app, args)
        if args[-1] == "cuda" and result.exit_code == 0:
            continue  # a machine with CUDA runs it
        assert result.exit_code == 2, args
        assert message in result.output and "Traceback" not in result.output


def test_bench_node_memory_rows():
    result = runner.invoke(app, ["bench", "node-memory", "--time-steps", "2,8", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [r["time_steps"] for r in rows] == [2, 8]
    # Beyond its output, the reversible node keeps O(1) floats plus a bit per step; the LIF keeps floats per step.
    # LIF: two float32 per neuron and step (h - theta for the surrogate, the reset mask); 32 x 256 neurons.
    assert rows[1]["lif_beyond_output_bytes"] - rows[0]["lif_beyond_output_bytes"] == 6 * 2 * 4 * 32 * 256
    assert rows[1]["reversible_beyond_output_bytes"] < 2 * rows[0]["reversible_beyond_output_bytes"]


def test_bench_infer_rows():
    result = runner.invoke(app, ["bench", "infer", "--batch-size", "4", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["batch_size"] for r in rows] == [1, 4]
    for r in rows:
        assert r["torch"] > 0 and r["onnxruntime"] > 0 and r["onnxruntime_speedup"] > 0
    result = runner.invoke(app, ["bench", "infer", "--model", "nope"])
    assert result.exit_code == 2 and "Unknown model" in result.output


def test_bench_peers_rows():
    from revsnn.bench_peers import missing_peers

    result = runner.invoke(app, ["bench", "peers", "--time-steps", "1", "--batch-size", "1", "--repeats", "3",
                                 "--step-batch-size", "2", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    text = result.stdout  # spikingjelly may log on import; the JSON document is what starts a line with "{"
    out = json.loads(text[0 if text.startswith("{\n") else text.index("\n{\n") + 1:])
    variants = [r["variant"] for r in out["rows"]]
    assert variants[:3] == ["revsnn reversible", "revsnn reversible-recompute", "revsnn plain"]
    assert set(out["missing"]) == set(missing_peers())
    if not missing_peers():  # scripts/setup.sh installs both
        assert {"spikingjelly BPTT", "spikingjelly memopt", "snntorch BPTT"} <= set(variants)
    base = out["rows"][0]
    for r in out["rows"]:
        assert r["peak_ratio"] == r["peak_per_sample"] / base["peak_per_sample"]
        assert r["peak_per_sample"] > 0
    by = {r["variant"]: r for r in out["rows"]}
    for v in ("revsnn reversible", "revsnn reversible-recompute", "revsnn plain"):
        assert by[v]["retained_per_sample"] > 0, v
    # memory behaviour, not timing: the reversible model retains less than its plain twin
    assert by["revsnn reversible"]["retained_per_sample"] < by["revsnn plain"]["retained_per_sample"]
    assert out["threads"] == 1
    assert out["step_batch_size"] == 2 and out["batch_sizes"] == [1, 2]
    for r in out["rows"]:
        assert len(r["step_seconds_each"]) == 3 and r["step_seconds"] == statistics.median(r["step_seconds_each"])

    def paired(a, b):  # the median over rounds of the ratio within a round
        return statistics.median(x / y for x, y in zip(a, b))

    for r in out["rows"]:
        assert r["step_time_ratio"] == paired(r["step_seconds_each"], base["step_seconds_each"])
    for pair, r in out["versus_peers"].items():  # ours over each peer, from the same rows
        ours, peer = pair.split(" / ")
        assert r["step_time"] == paired(by[ours]["step_seconds_each"], by[peer]["step_seconds_each"])
        assert r["step_cpu_time"] == paired(by[ours]["step_cpu_seconds_each"], by[peer]["step_cpu_seconds_each"])
        assert r["peak"] == by[ours]["peak_per_sample"] / by[peer]["peak_per_sample"]
        assert r["step_time_of_medians"] == by[ours]["step_seconds"] / by[peer]["step_seconds"]
    if not missing_peers():
        assert "revsnn reversible / spikingjelly memopt" in out["versus_peers"]
    result = runner.invoke(app, ["bench", "peers", "--model", "trevsnn-digits"])
    assert result.exit_code == 2 and "ResNets" in result.output and "Traceback" not in result.output
