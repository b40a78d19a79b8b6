"""Benchmark of file_averaging.py against per-line pure-Python blends, on generated inputs.

Generates `--files` prediction CSVs in inference.py's format (random YouTube-like ids, `--pairs`
distinct labels per row drawn from 4716, scores in [0, 1] as %.6f sorted descending, every
file holding the same videos in its own order, about 2% of the videos missing from each file),
then runs, each in a fresh child process:
  * file_averaging.py (the CLI) on the full-size files, `--repeats` times, alternating with
    `--compare_script` (another version of file_averaging.py, e.g. a worktree at an earlier
    commit) when given; every output must be the same byte for byte;
  * on a tenth of the videos (the baselines need ~100 bytes of RAM per (video, label) they
    hold: ~24 GB at full size), file_averaging.py again and two baselines, whose full-size
    cost is extrapolated linearly (marked as such in the table):
    - the original algorithm: the original WILLOW file_averaging.py's loop (dict of Counters,
      split per line, the first half of the pairs, scores truncated to 5 decimals,
      `most_common(20)`), ids kept as strings so that it runs on YouTube ids;
    - the plain-Python per-line blend: the same loop with the original's defects fixed so that
      its output is comparable (every pair, float64 sums, top 20 by score then label, "%.6f"),
      which must equal file_averaging.py's byte for byte.

Usage:
  python benchmarks/bench_file_averaging.py [--videos=700640] [--pairs=50] [--files=7]
      [--workdir=DIR] [--baseline_videos=70064] [--skip_baseline] [--repeats=1]
      [--compare_script=OTHER/file_averaging.py]
"""
import argparse
import collections
import heapq
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "file_averaging.py")
HEADER = b"VideoId,LabelConfidencePairs\n"
NUM_CLASSES = 4716
ID_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                            np.uint8)
ID_LENGTH = 11
MISSING_FRACTION = 0.02
ROWS_PER_CHUNK = 20000


# ---------------------------------------------------------------------------------------------
# Input generation (vectorized: the full-size files take about a minute).


def random_ids(num_videos: int, rng: np.random.Generator) -> np.ndarray:
  """Distinct 11-character ids over YouTube's alphabet, as an (n, 11) uint8 array."""
  ids = ID_ALPHABET[rng.integers(0, len(ID_ALPHABET), (num_videos, ID_LENGTH))]
  while True:
    _, first = np.unique(ids.view("S%d" % ID_LENGTH).ravel(), return_index=True)
    if len(first) == num_videos:
      return ids
    again = np.setdiff1d(np.arange(num_videos), first)
    ids[again] = ID_ALPHABET[rng.integers(0, len(ID_ALPHABET), (len(again), ID_LENGTH))]


def digit_columns(values: np.ndarray, width: int):
  digits = np.stack([48 + (values // 10**(width - 1 - c)) % 10 for c in range(width)], -1)
  keep = np.stack([values >= 10**(width - 1 - c) if c < width - 1 else values >= 0
                   for c in range(width)], -1)
  return digits.astype(np.uint8), keep


def rows_text(ids: np.ndarray, pairs: int, rng: np.random.Generator) -> bytes:
  """CSV lines `<id>,<label> <score> ...` with distinct labels and descending scores."""
  n = len(ids)
  # Sorted draws + 0..pairs-1 are distinct; a random permutation of the classes then removes
  # the order (and any link between a label's value and its rank).
  labels = np.sort(rng.integers(0, NUM_CLASSES - pairs + 1, (n, pairs)), axis=1) + np.arange(pairs)
  labels = CLASS_PERMUTATION[labels]
  micro = -np.sort(-rng.integers(0, 1_000_001, (n, pairs)), axis=1)
  label_digits, label_keep = digit_columns(labels, 4)
  cells = np.concatenate([
      label_digits, np.full((n, pairs, 1), 32, np.uint8),
      digit_columns(micro // 1_000_000, 1)[0], np.full((n, pairs, 1), 46, np.uint8),
      digit_columns(micro % 1_000_000, 6)[0], np.full((n, pairs, 1), 32, np.uint8)], axis=2)
  cells[:, -1, -1] = 10
  keep = np.concatenate([label_keep, np.ones((n, pairs, 10), bool)], axis=2)
  grid = np.concatenate([ids, np.full((n, 1), 44, np.uint8), cells.reshape(n, -1)], axis=1)
  keep = np.concatenate([np.ones((n, ID_LENGTH + 1), bool), keep.reshape(n, -1)], axis=1)
  return grid[keep].tobytes()


CLASS_PERMUTATION = np.random.default_rng(12345).permutation(NUM_CLASSES)


def write_prediction_file(job) -> None:
  path, ids, pairs, seed = job
  rng = np.random.default_rng(seed)
  with open(path, "wb") as out:
    out.write(HEADER)
    for first in range(0, len(ids), ROWS_PER_CHUNK):
      out.write(rows_text(ids[first:first + ROWS_PER_CHUNK], pairs, rng))


def generate_inputs(folder: str, num_videos: int, pairs: int, num_files: int, seed: int):
  """Writes the input CSVs (reused when the folder already holds the same ones)."""
  names = ["model%d.csv" % i for i in range(num_files)]
  manifest = dict(videos=num_videos, pairs=pairs, files=num_files, seed=seed, version=1)
  manifest_path = os.path.join(folder, "manifest.json")
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      if json.load(f) == manifest and all(os.path.exists(os.path.join(folder, n)) for n in names):
        return names
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  ids = random_ids(num_videos, rng)
  present = rng.random((num_files, num_videos)) >= MISSING_FRACTION
  present[0] |= ~present.any(axis=0)  # every video is in at least one file
  jobs = []
  for i, name in enumerate(names):
    order = rng.permutation(num_videos)
    order = order[present[i, order]]
    jobs.append((os.path.join(folder, name), ids[order], pairs, seed * 1000 + i))
  with multiprocessing.get_context("fork").Pool(min(2, os.cpu_count() or 1)) as pool:
    pool.map(write_prediction_file, jobs)
  with open(manifest_path, "w") as f:
    json.dump(manifest, f)
  return names


# ---------------------------------------------------------------------------------------------
# The baselines: the original per-line algorithm, as it was and with its defects fixed.


def original_blend(inputs, output_file: str, top_k: int = 20) -> None:
  """The original's algorithm: half of each row's pairs, scores as int(1e5 * score)."""
  blend = collections.defaultdict(collections.Counter)
  for path, weight in inputs:
    with open(path) as f:
      f.readline()
      for line in f:
        video_id, pairs = line.rstrip("\n").split(",")
        tokens = pairs.split(" ")
        counter = blend[video_id]
        for i in range(0, len(tokens) // 2, 2):
          counter[int(tokens[i])] += weight * int(1e5 * float(tokens[i + 1]))
  total_weight = sum(weight for _, weight in inputs)
  with open(output_file, "w") as out:
    out.write("VideoID,LabelConfidencePairs\n")
    for video_id, counter in blend.items():
      out.write(video_id + "," + " ".join("%d %6f" % (label, value / 1e5 / total_weight)
                                          for label, value in counter.most_common(top_k))
                + "\n")


def baseline_blend(inputs, output_file: str, top_k: int = 20) -> None:
  blend = collections.defaultdict(collections.Counter)
  for path, weight in inputs:
    with open(path) as f:
      f.readline()
      for line in f:
        video_id, pairs = line.rstrip("\n").split(",")
        tokens = pairs.split(" ")
        counter = blend[video_id]
        for i in range(0, len(tokens), 2):
          counter[int(tokens[i])] += weight * float(tokens[i + 1])
  total_weight = sum(weight for _, weight in inputs)
  with open(output_file, "w") as out:
    out.write("VideoId,LabelConfidencePairs\n")
    for video_id, counter in blend.items():
      best = heapq.nsmallest(top_k, ((-value / total_weight, label)
                                     for label, value in counter.items()))
      out.write(video_id + "," + " ".join("%d %.6f" % (label, -score) for score, label in best)
                + "\n")


# ---------------------------------------------------------------------------------------------
# Measurement.


def tree_rss_bytes(pid: int) -> int:
  """Resident memory of a process and all its descendants (from /proc)."""
  total, pending = 0, [pid]
  while pending:
    current = pending.pop()
    try:
      with open("/proc/%d/status" % current) as f:
        for line in f:
          if line.startswith("VmRSS:"):
            total += int(line.split()[1]) * 1024
      for task in os.listdir("/proc/%d/task" % current):
        with open("/proc/%d/task/%s/children" % (current, task)) as f:
          pending.extend(int(child) for child in f.read().split())
    except (OSError, ValueError):
      pass
  return total


def run_measured(command, cwd: str):
  """(wall s, CPU s, peak RSS of the largest process, peak summed RSS of the process tree)."""
  LOAD_SAMPLES.append(os.getloadavg()[0])
  start = time.perf_counter()
  child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  peak_tree = [0]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak_tree[0] = max(peak_tree[0], tree_rss_bytes(child.pid))
      done.wait(0.05)

  sampler = threading.Thread(target=sample)
  sampler.start()
  stderr = child.stderr.read()
  _, status, usage = os.wait4(child.pid, 0)
  wall = time.perf_counter() - start
  done.set()
  sampler.join()
  child.returncode = os.waitstatus_to_exitcode(status)
  if child.returncode:
    raise SystemExit("%s failed (%d):\n%s" % (command, child.returncode, stderr.decode()))
  return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, peak_tree[0]


def run_ours(folder: str, names, output: str, script: str = SCRIPT):
  command = [sys.executable, script, "--inputs=" + ",".join(names), "--input_dir=" + folder,
             "--output_file=" + output]
  return run_measured(command, folder)


def run_baseline(folder: str, names, output: str, function: str = "baseline_blend"):
  inputs = [(os.path.join(folder, n), 1.0) for n in names]
  code = ("import sys; sys.path.insert(0, %r); import bench_file_averaging as b; "
          "b.%s(%r, %r)" % (HERE, function, inputs, output))
  return run_measured([sys.executable, "-c", code], folder)


def same_bytes(path_a: str, path_b: str) -> bool:
  with open(path_a, "rb") as a, open(path_b, "rb") as b:
    return a.read() == b.read()


def import_seconds() -> float:
  """Start-up cost of `import file_averaging` (numpy, pyarrow, absl)."""
  code = ("import time; t = time.perf_counter(); import file_averaging; "
          "print(time.perf_counter() - t)")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True)
  return float(out.stdout.split()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--videos", type=int, default=700640)
  parser.add_argument("--pairs", type=int, default=50)
  parser.add_argument("--files", type=int, default=7)
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                        "bench_file_averaging"))
  parser.add_argument("--baseline_videos", type=int, default=None,
                      help="Videos for the baseline run (default: videos/10 when that is "
                           "above 100,000, else all of them).")
  parser.add_argument("--skip_baseline", action="store_true")
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=1,
                      help="Full-size runs of file_averaging.py (and of --compare_script).")
  parser.add_argument("--compare_script", default=None,
                      help="Another file_averaging.py, run in turn with this one at full size.")
  args = parser.parse_args()
  baseline_videos = args.baseline_videos or (
      args.videos // 10 if args.videos > 100_000 else args.videos)

  full = os.path.join(args.workdir, "v%d-p%d-f%d" % (args.videos, args.pairs, args.files))
  t = time.perf_counter()
  names = generate_inputs(full, args.videos, args.pairs, args.files, args.seed)
  size_mb = sum(os.path.getsize(os.path.join(full, n)) for n in names) / 2**20
  print("inputs: %d files, %d videos, %d pairs per row, %.0f MB in %s (%.0f s to generate)"
        % (args.files, args.videos, args.pairs, size_mb, full, time.perf_counter() - t),
        flush=True)

  rows = []
  ours_csv = os.path.join(args.workdir, "ours_full.csv")
  other_csv = os.path.join(args.workdir, "compare_full.csv")
  for repeat in range(args.repeats):
    ours_full = run_ours(full, names, ours_csv)
    rows.append(("file_averaging.py", args.videos, ours_full, "run %d" % (repeat + 1)))
    print("file_averaging.py: %.1f s" % ours_full[0], flush=True)
    if args.compare_script:
      other = run_ours(full, names, other_csv, args.compare_script)
      rows.append(("--compare_script", args.videos, other, "run %d" % (repeat + 1)))
      print("%s: %.1f s, same output: %s" % (args.compare_script, other[0],
                                              same_bytes(ours_csv, other_csv)), flush=True)
  if not args.skip_baseline:
    small = os.path.join(args.workdir, "v%d-p%d-f%d" % (baseline_videos, args.pairs, args.files))
    small_names = generate_inputs(small, baseline_videos, args.pairs, args.files, args.seed + 1)
    ours_small_csv = os.path.join(args.workdir, "ours_small.csv")
    baseline_csv = os.path.join(args.workdir, "baseline_small.csv")
    ours_small = run_ours(small, small_names, ours_small_csv)
    original = run_baseline(small, small_names, os.path.join(args.workdir, "original_small.csv"),
                            "original_blend")
    baseline = run_baseline(small, small_names, baseline_csv)
    with open(ours_small_csv, "rb") as a, open(baseline_csv, "rb") as b:
      ours_text, baseline_text = a.read(), b.read()
    same = ours_text == baseline_text
    rows.append(("file_averaging.py", baseline_videos, ours_small, ""))
    for name, result in (("original algorithm", original),
                         ("plain-Python per-line blend", baseline)):
      rows.append((name, baseline_videos, result, ""))
      if baseline_videos != args.videos:
        scale = args.videos / baseline_videos
        rows.append((name + ", extr.", args.videos, tuple(value * scale for value in result),
                     "x%.0f of the row above" % scale))
    print("outputs identical (%d videos): %s" % (baseline_videos, same), flush=True)
    if not same:
      lines = zip(ours_text.split(b"\n"), baseline_text.split(b"\n"))
      for number, (ours_line, baseline_line) in enumerate(lines, 1):
        if ours_line != baseline_line:
          print("first difference, line %d:\n  ours:     %s\n  baseline: %s"
                % (number, ours_line[:200], baseline_line[:200]))
          break

  reference = {}  # file_averaging.py's best wall time at each size
  for name, videos, result, _ in rows:
    if name == "file_averaging.py":
      reference[videos] = min(reference.get(videos, np.inf), result[0])
  print("\n%-27s %8s %8s %8s %12s %14s %7s" % ("implementation", "videos", "wall s", "CPU s",
                                               "peak MB (1)", "peak MB (all)", "ratio"))
  for name, videos, (wall, cpu, peak_one, peak_all), note in rows:
    print("%-27s %8d %8.1f %8.1f %12.0f %14.0f %6.1fx %s" % (
        name, videos, wall, cpu, peak_one / 2**20, peak_all / 2**20, wall / reference[videos],
        note))
  print("\nwall s: elapsed; CPU s: user + system of the process and its children. peak MB (1): "
        "largest single process (wait4 ru_maxrss); peak MB (all): summed RSS of the process "
        "tree, sampled every 50 ms. ratio: wall s / file_averaging.py's best at the same size.")
  print("`import file_averaging` alone takes %.1f s. "
        "Load average during the runs: %s (this machine: %d cores of %s)."
        % (import_seconds(), " / ".join("%.1f" % x for x in LOAD_SAMPLES), os.cpu_count(),
           cpu_name()))


def cpu_name() -> str:
  with open("/proc/cpuinfo") as f:
    names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  return names[0] if names else "an unknown CPU"


LOAD_SAMPLES = []


if __name__ == "__main__":
  main()
