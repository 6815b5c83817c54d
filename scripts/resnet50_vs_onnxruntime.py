"""ResNet-50 inference on wgrad against onnxruntime, alternated round by round on one host.

The issue target for `wgrad bench --filter resnet50_infer` is a ratio to onnxruntime's CPU time
on the same cores. On a shared host, slow spells last seconds and fall on one side or the other,
so a single pair of figures says little. This script alternates the two (and optionally a
second wgrad build, to measure a change before and after) for many rounds and reports:

- every round: onnxruntime's median and minimum of --runs runs, each wgrad binary's median and
  fastest of its 11 runs (the bench entry's statistics), and the ratio of medians;
- the floors: the lowest onnxruntime run and the fastest wgrad run of the sitting, and their
  ratio (noise only adds time, so the floors are the sitting's best estimate of each side);
- each binary's quiet rounds: those where onnxruntime's median is within 5% of its floor and
  the binary's fastest run within 5% of its floor, its median within 10% of that fastest run
  (both sides ran undisturbed), with the median and range of their ratios.

Run by hand from the repository root after `cargo build --release` (CI runs Rust only), on an
otherwise idle machine, with the venv of scripts/onnxruntime_resnet50.py:
  /tmp/ortvenv/bin/python scripts/resnet50_vs_onnxruntime.py [--rounds 20] [--threads 2]
      [--runs 30] [--wgrad target/release/wgrad] [--base /path/to/other/wgrad]
Prints one JSON line per round, then one summary line.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from onnxruntime_resnet50 import build_resnet50  # noqa: E402

QUIET_ORT = 1.05  # onnxruntime's median within 5% of the sitting's lowest run
QUIET_FLOOR = 1.05  # wgrad's fastest run within 5% of the sitting's fastest
QUIET_SPREAD = 1.10  # wgrad's median within 10% of its own fastest run


def ort_session(threads, seed):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(
        build_resnet50(seed).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    feeds = {"input": np.random.default_rng(seed + 1).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    for _ in range(3):
        sess.run(None, feeds)
    return sess, feeds


def time_ort(sess, feeds, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def time_wgrad(binary):
    out = subprocess.run(
        [binary, "bench", "--json", "--no-cpu", "--filter", "resnet50_infer"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if '"resnet50_infer"' in line:
            fig = json.loads(line)
            return fig["ms"], fig["fastest_ms"]
    raise RuntimeError(f"{binary} printed no resnet50_infer figure")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra_op_num_threads")
    ap.add_argument("--runs", type=int, default=30, help="onnxruntime runs per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wgrad", default="target/release/wgrad")
    ap.add_argument("--base", help="a second wgrad binary, run after the first in every round")
    args = ap.parse_args()

    binaries = {"wgrad": args.wgrad}
    if args.base:
        binaries["base"] = args.base
    sess, feeds = ort_session(args.threads, args.seed)
    rounds = []
    for r in range(args.rounds):
        row = {"round": r + 1, "utc": time.strftime("%H:%M:%S", time.gmtime())}
        row["ort_median_ms"], row["ort_min_ms"] = time_ort(sess, feeds, args.runs)
        for name, binary in binaries.items():
            row[f"{name}_median_ms"], row[f"{name}_fastest_ms"] = time_wgrad(binary)
            row[f"{name}_ratio"] = row[f"{name}_median_ms"] / row["ort_median_ms"]
        rounds.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    ort_floor = min(r["ort_min_ms"] for r in rounds)
    summary = {"rounds": len(rounds), "ort_floor_ms": round(ort_floor, 2)}
    floors = {name: min(r[f"{name}_fastest_ms"] for r in rounds) for name in binaries}

    def quiet(r, n):
        return (
            r["ort_median_ms"] <= QUIET_ORT * ort_floor
            and r[f"{n}_fastest_ms"] <= QUIET_FLOOR * floors[n]
            and r[f"{n}_median_ms"] <= QUIET_SPREAD * r[f"{n}_fastest_ms"]
        )

    for name in binaries:
        ratios = [r[f"{name}_ratio"] for r in rounds if quiet(r, name)]
        summary[f"{name}_floor_ms"] = round(floors[name], 2)
        summary[f"{name}_floor_ratio"] = round(floors[name] / ort_floor, 3)
        summary[f"{name}_ratio_all_median"] = round(statistics.median(r[f"{name}_ratio"] for r in rounds), 3)
        summary[f"{name}_quiet_rounds"] = len(ratios)
        if ratios:
            summary[f"{name}_ratio_quiet_median"] = round(statistics.median(ratios), 3)
            summary[f"{name}_ratio_quiet_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    if args.base:
        summary["wgrad_faster_than_base_rounds"] = sum(
            r["wgrad_median_ms"] < r["base_median_ms"] for r in rounds
        )
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
