"""The examples run, and mixer-bench runs and documents its JSON fields."""
import json
import subprocess
import sys

from click.testing import CliRunner

import pytest

from conftest import GOLDEN, ROOT, golden_greedy
from micromixer_edge.bench.cli import bench_command


def test_custom_loop_example_matches_the_runner(export_file):
    """The example's hand-written loop is a second code path: it must agree with the golden run."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_loop.py"),
                           str(export_file("brief_100k_model")), "Once upon a time"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    golden = golden_greedy("100k")["continuations"][0]["new_text"]
    # it stops at max_seq_len (64): 17 prompt ids + 47 fed bytes, so 48 new bytes
    assert proc.stdout == "Once upon a time" + golden[:48] + "\n"


def test_batch_example_runs(export_file):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "batch_generation.py"),
                           str(export_file("brief_100k_model"))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- ") == 3


def test_bench_json_fields(export_file):
    path = str(export_file("brief_100k_model"))
    result = CliRunner().invoke(bench_command, [path, "--repeats", "1", "--threads", "2", "--json",
                                                "--reference", str(GOLDEN / "brief_100k_model.pt")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {"machine", "onnxruntime", "cpus"} <= set(doc["environment"])
    model = doc["models"][0]
    for key in ("file_mb", "load_ms", "decode_tokens_per_s_1t", "decode_tokens_per_s_2t",
                "prefill_window_ms", "cold_start_ms", "peak_rss_mb", "batch1_tokens_per_s",
                "batch8_tokens_per_s", "batch64_tokens_per_s", "prefill_over_step"):
        assert key in model, key
    stat = model["decode_tokens_per_s_1t"]
    assert stat["low"] <= stat["median"] <= stat["high"] and stat["median"] > 0
    assert 10 < model["peak_rss_mb"] < 1000
    for th in (1, 2):  # the original at the runner's own thread counts
        ref = doc[f"reference_{th}t_tokens_per_s"]["median"]
        assert ref > 0
        assert model[f"speedup_vs_reference_{th}t"] == pytest.approx(model[f"decode_tokens_per_s_{th}t"]["median"] / ref)
    for name in ("halve", "halve_t0.8"):  # 3,000 bytes greedy, and at temperature 0.8 beside it
        ref = doc["reference_1t_tokens_per_s"]["median"]
        speed = model[f"decode_3000_{name}_tokens_per_s"]["median"]
        assert model[f"speedup_3000_{name}_vs_reference_1t"] == pytest.approx(speed / ref)
