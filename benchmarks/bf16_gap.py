"""Held-out GAP of `--mixed_precision=bf16` training against float32, paired by seed.

For each seed, runs the demo (demo.py: generated data, the README configurations scaled down)
twice, with --train_flags="--seed=S" and "--seed=S --mixed_precision=bf16", and prints each
model's held-out GAP in both and their difference. With one seed, the two runs start from the
same weights and see the same frames in the same order, so the difference is the precision's;
between seeds the demo's GAP moves by several hundredths, which would hide a 0.005 effect in
unpaired runs.

Usage: python benchmarks/bf16_gap.py [--models=netvlad,netrvlad] [--seeds=1,2]
    [--output_dir=DIR] [--quick]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT]

import demo  # noqa: E402
from willow import readme_configs  # noqa: E402

PRECISIONS = ("none", "bf16")


def demo_held_out_gaps(output_dir: str, models: str, seed: int, precision: str, quick: bool):
  """[(model title, held-out GAP)] of one demo run."""
  command = [sys.executable, os.path.join(ROOT, "demo.py"), "--output_dir=" + output_dir,
             "--train_flags=--seed=%d --mixed_precision=%s" % (seed, precision),
             "--models=" + models] + (["--quick"] if quick else [])
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
  return held_out_gaps(output_dir)


def held_out_gaps(output_dir: str):
  """[(model title, held-out GAP)] in the README's order, from the report
  fit_ensemble_weights.py wrote in the demo's output (a row per held-out CSV)."""
  with open(os.path.join(output_dir, "ensemble_weights.json")) as f:
    gaps = {row["name"]: row["gap"]["all"] for row in json.load(f)["rows"]}
  return [(c.title, gaps[demo.held_out_csv(c)]) for c in readme_configs.WILLOW_CONFIGS
          if demo.held_out_csv(c) in gaps]


def format_table(results):
  """results: {seed: {precision: [(title, gap)]}} -> the printed table lines."""
  lines = ["%-34s %5s %8s %8s %8s" % ("model", "seed", "fp32", "bf16", "bf16-fp32")]
  differences = []
  for seed, by_precision in sorted(results.items()):
    for (title, fp32), (_, bf16) in zip(by_precision["none"], by_precision["bf16"]):
      differences.append(bf16 - fp32)
      lines.append("%-34s %5d %8.4f %8.4f %+9.4f" % (title, seed, fp32, bf16, bf16 - fp32))
  lines.append("difference over %d pairs: mean %+.4f, largest |difference| %.4f" % (
      len(differences), statistics.mean(differences), max(abs(d) for d in differences)))
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="netvlad,netrvlad",
                      help="demo.py --models; empty: all seven")
  parser.add_argument("--seeds", default="1,2")
  parser.add_argument("--output_dir", default="", help="default: a temporary directory")
  parser.add_argument("--quick", action="store_true", help="demo.py --quick (a few steps)")
  args = parser.parse_args()
  base = args.output_dir or tempfile.mkdtemp(prefix="willow-bf16-gap-")
  results = {}
  for seed in (int(s) for s in args.seeds.split(",")):
    for precision in PRECISIONS:
      directory = os.path.join(base, "seed%d-%s" % (seed, precision))
      results.setdefault(seed, {})[precision] = demo_held_out_gaps(
          directory, args.models, seed, precision, args.quick)
      print("seed %d, --mixed_precision=%s: %s" % (seed, precision, ", ".join(
          "%.4f" % gap for _, gap in results[seed][precision])), flush=True)
  print("\n".join(format_table(results)))
  print("demo outputs in %s" % base)


if __name__ == "__main__":
  main()
