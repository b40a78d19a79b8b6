"""`make bench`: throughput of the WILLOW suite against this machine's own limits.

Every figure is printed as an absolute number and as a ratio measured in the same run, since
absolute timings on a shared machine are noisy:
  * matmul peak: best fp32 GFLOP/s of tf.matmul over two non-power-of-two shapes (flops.py),
    measured first (every %peak divides by it) and again last;
  * reader: decoded videos/s of the frame-level pipeline on generated 300-frame rgb+audio
    videos, vs. raw TFRecord bytes/s of the same files, vs. what each training step consumes;
  * training: steps/s, examples/s, achieved FLOP/s / peak for the seven README configurations
    at their README batch sizes (random input tensors fed to Trainer.train_step, so that only
    compute is measured), plus one end-to-end run through the real input pipeline;
  * inference: videos/s and FLOP/s / peak (float64, the scripts' default, and float32);
  * cost growth: time per example as frames, clusters and batch size double (NetVLAD);
  * file_averaging (benchmarks/bench_file_averaging.py, reduced size unless --full_averaging);
  * kernel ceiling: the Gated NetVLAD step's matrix products timed alone at their shapes, and
    the step time (and %peak) they bound (benchmarks/kernel_ceiling.py).
FLOPs are counted analytically (benchmarks/flops.py). Each model runs in a child process, so
that its memory is returned and its peak resident set is its own.

Usage: python benchmarks/run_benchmarks.py [--configs=netvlad,gru] [--min_steps=3]
    [--min_seconds=10] [--inference_batch_cap=256] [--full_averaging] [--skip=reader,growth]
    [--jit_compile=False] [--mixed_precision=none] [--json=results.json]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

# TensorFlow's BFC allocator, as the scripts choose it; children inherit the environment (the
# reader section measures both settings explicitly).
import willow.tf_env  # noqa: E402,F401

SECTIONS = ("reader", "train", "e2e", "inference", "growth", "averaging", "ceiling")
READER_VIDEOS = 240


# ---------------------------------------------------------------------------------------------
# Child-side measurements (each runs in its own process; prints one JSON line).


def _random_batch(config, batch_size, frames=300, seed=0):
  import tensorflow as tf
  g = tf.random.Generator.from_seed(seed)
  return dict(
      video_matrix=g.uniform([batch_size, frames, config.input_size], -2.0, 2.0),
      num_frames=tf.fill([batch_size], frames),
      labels=tf.cast(g.uniform([batch_size, config.num_classes]) < 0.001, tf.float32))


def _make_trainer(config, batch_size, data_pattern="", jit_compile=None, mixed_precision=None):
  import dataclasses
  import tensorflow as tf
  from willow import training
  fields = {f.name for f in dataclasses.fields(training.TrainOptions)}
  extra = {}
  if jit_compile is not None and "jit_compile" in fields:
    extra["jit_compile"] = jit_compile
  if mixed_precision is not None and "mixed_precision" in fields:
    extra["mixed_precision"] = mixed_precision
  options = training.TrainOptions(train_dir=tempfile.mkdtemp(prefix="bench-"),
                                  data_pattern=data_pattern, batch_size=batch_size, **extra)
  return training.Trainer(config, options, tf.distribute.get_strategy())


def _time_steps(step, min_steps, min_seconds, warmup=2, measure_peak=True):
  """Runs step() warmup times, then until both min_steps and min_seconds are reached;
  returns (steps, seconds) of the timed part."""
  for _ in range(warmup):
    step()
  if measure_peak:
    _LOCAL["peak"] = _local_peak()
  steps, start = 0, time.perf_counter()
  while steps < min_steps or time.perf_counter() - start < min_seconds:
    step()
    steps += 1
  return steps, time.perf_counter() - start


def _rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# The machine is shared: each child also measures the matmul peak right before its timed
# steps (column "local GF"), which shows how busy the machine was during that row.
_LOCAL = {}


def _local_peak():
  import flops
  return flops.matmul_peak(seconds=1.5)


def child_train(a):
  import flops
  config, values = flops.config_and_flags(a.config, json.loads(a.overrides or "{}"))
  batch_size = values.batch_size
  trainer = _make_trainer(config, batch_size, jit_compile=a.jit_compile,
                          mixed_precision=a.mixed_precision)
  batch = _random_batch(config, batch_size)
  steps, seconds = _time_steps(lambda: float(trainer.train_step(batch)["total_loss"]),
                               a.min_steps, a.min_seconds)
  return dict(batch=batch_size, steps=steps, seconds=seconds, rss_mb=_rss_mb(),
              peak=_LOCAL["peak"], params=trainer.model.num_trainable_parameters,
              flops_per_example=flops.training_flops_per_video(config))


def child_e2e(a):
  """Training through the real input pipeline (reader + shuffle + decode + step)."""
  import flops
  config, values = flops.config_and_flags(a.config)
  trainer = _make_trainer(config, values.batch_size, a.data_pattern, jit_compile=a.jit_compile)
  trainer.options.num_epochs = None
  batches = iter(trainer.distributed_dataset())
  steps, seconds = _time_steps(lambda: float(trainer.train_step(next(batches))["total_loss"]),
                               a.min_steps, a.min_seconds)
  return dict(batch=values.batch_size, steps=steps, seconds=seconds, rss_mb=_rss_mb(),
              peak=_LOCAL["peak"], flops_per_example=flops.training_flops_per_video(config))


def child_inference(a):
  import tensorflow as tf
  import flops
  import inference
  from willow import models
  config, values = flops.config_and_flags(a.config)
  model = models.build_model(config)
  model.compute_dtype = tf.as_dtype(a.precision)
  batch = _random_batch(config, a.batch)
  # As inference.py: with --jit_compile=auto, XLA in float32 except for long hidden layers.
  jit = inference.inference_uses_xla("auto" if a.jit_compile is None else a.jit_compile,
                                     a.precision, model)
  predict = inference.make_predict_fn(model, 50, jit)

  steps, seconds = _time_steps(
      lambda: predict(batch["video_matrix"], batch["num_frames"])[0].numpy(),
      a.min_steps, a.min_seconds, warmup=1)
  return dict(batch=a.batch, steps=steps, seconds=seconds, rss_mb=_rss_mb(),
              peak=_LOCAL["peak"], flops_per_example=flops.inference_flops_per_video(config))


def child_reader(a):
  """Raw TFRecord bytes/s, then decoded videos/s of the training pipeline, same files."""
  import tensorflow as tf
  import flops
  import readers
  files = sorted(tf.io.gfile.glob(a.data_pattern))
  size = sum(os.path.getsize(f) for f in files)
  config, _ = flops.config_and_flags("netvlad")
  out = dict(bfc=os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", ""), bytes=size, videos=0)
  for _ in range(2):  # the second pass reads from the page cache, as training epochs do
    start = time.perf_counter()
    count = sum(1 for _ in tf.data.TFRecordDataset(files, num_parallel_reads=4).batch(64))
    out["raw_seconds"] = time.perf_counter() - start
  reader = readers.reader_for(config)
  dataset = readers.get_input_dataset(reader, a.data_pattern, 80, num_readers=8, shuffle=True,
                                      num_epochs=None, seed=1)
  batches = iter(dataset)
  next(batches)
  videos, start = 0, time.perf_counter()
  while videos < 3 * READER_VIDEOS or time.perf_counter() - start < a.min_seconds:
    videos += int(next(batches)["num_frames"].shape[0])
  out.update(videos=videos, decode_seconds=time.perf_counter() - start,
             videos_per_file_pass=READER_VIDEOS, count=count)
  return out


def child_growth(a):
  """Per-example train and inference time of a scaled NetVLAD as one size doubles at a time."""
  import tensorflow as tf
  import flops
  base = dict(netvlad_cluster_size=32, netvlad_hidden_size=256, iterations=60, batch_size=32)
  series = [("iterations", [60, 120, 240, 480]), ("netvlad_cluster_size", [32, 64, 128, 256]),
            ("batch_size", [16, 32, 64, 128])]
  rows = []
  for name, sizes in series:
    for size in sizes:
      overrides = dict(base, **{name: size})
      frames = max(300, overrides["iterations"])
      config, values = flops.config_and_flags(
          "netvlad", {k: str(v) for k, v in overrides.items()})
      trainer = _make_trainer(config, values.batch_size, jit_compile=a.jit_compile)
      batch = _random_batch(config, values.batch_size, frames=frames)
      steps, seconds = _time_steps(lambda: float(trainer.train_step(batch)["total_loss"]),
                                   3, a.min_seconds / 4, measure_peak=False)
      model = trainer.model

      @tf.function
      def predict(video_matrix, num_frames):
        return model(video_matrix, num_frames, training=False)["predictions"]

      isteps, iseconds = _time_steps(
          lambda: predict(batch["video_matrix"], batch["num_frames"]).numpy(),
          3, a.min_seconds / 4, warmup=1, measure_peak=False)
      rows.append(dict(name=name, size=size, batch=values.batch_size,
                       train_ms=1e3 * seconds / steps / values.batch_size,
                       infer_ms=1e3 * iseconds / isteps / values.batch_size,
                       train_flops=flops.training_flops_per_video(config),
                       infer_flops=flops.inference_flops_per_video(config)))
  return dict(rows=rows)


def child_ceiling(a):
  import kernel_ceiling
  return kernel_ceiling.measure(a.config, seconds=0.6)


CHILDREN = dict(train=child_train, e2e=child_e2e, inference=child_inference,
                reader=child_reader, growth=child_growth, ceiling=child_ceiling)


# ---------------------------------------------------------------------------------------------
# Parent: orchestration and the table.


def run_child(kind, args, env=None, **params):
  cmd = [sys.executable, os.path.abspath(__file__), "--child=" + kind,
         "--min_steps=%d" % args.min_steps, "--min_seconds=%g" % args.min_seconds]
  if args.jit_compile is not None:
    cmd.append("--jit_compile=%s" % args.jit_compile)
  cmd += ["--%s=%s" % (k, v) for k, v in params.items() if v is not None]
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
  proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    sys.stderr.write("child %s %s failed:\n%s\n" % (kind, params, proc.stderr[-3000:]))
    return None
  return json.loads(lines[-1])


def generate_reader_data(directory):
  import make_synthetic_data
  if not os.path.exists(os.path.join(directory, "train0003.tfrecord")):
    make_synthetic_data.generate_partition(directory, "train", READER_VIDEOS, num_shards=4,
                                           min_frames=300, max_frames_gen=300)
  return os.path.join(directory, "train*.tfrecord")


def fmt_rate(flop_per_s, peak):
  return "%7.1f  %5.1f%%" % (flop_per_s / 1e9, 100.0 * flop_per_s / peak)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--child", choices=sorted(CHILDREN))
  parser.add_argument("--config")
  parser.add_argument("--overrides")
  parser.add_argument("--precision", default="float64")
  parser.add_argument("--batch", type=int)
  parser.add_argument("--data_pattern")
  parser.add_argument("--mixed_precision")
  parser.add_argument("--jit_compile", type=lambda s: s.lower() == "true", default=None,
                      help="train step with XLA (default: the trainer's default)")
  parser.add_argument("--configs", default="netvlad,netfv,gated_dbof,soft_dbof,netrvlad,gru,lstm")
  parser.add_argument("--min_steps", type=int, default=3)
  parser.add_argument("--min_seconds", type=float, default=8.0)
  parser.add_argument("--inference_batch_cap", type=int, default=256,
                      help="inference batch = min(README batch, cap): per-video cost hardly "
                           "depends on the batch (see the growth table), a README batch of "
                           "1024 costs minutes per step for the RNNs; 0 = no cap")
  parser.add_argument("--inference_precisions", default="float64,float32",
                      help="inference dtypes to measure (float64 is the scripts' default)")
  parser.add_argument("--e2e_config", default="netvlad")
  parser.add_argument("--skip", default="", help="comma list of " + ",".join(SECTIONS))
  parser.add_argument("--full_averaging", action="store_true",
                      help="file_averaging at the real test-set size (700,640 x 7 files)")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "willow-bench"))
  parser.add_argument("--json")
  a = parser.parse_args()
  if a.child:
    print(json.dumps(CHILDREN[a.child](a)))
    return
  run_all(a)


def run_all(a):
  from willow import readme_configs
  import flops
  skip = set(filter(None, a.skip.split(",")))
  keys = a.configs.split(",")
  results = dict(args=vars(a))
  print("willow-tf2 benchmarks on %d cores (shared machine: ratios within this run are the "
        "figures to compare)" % os.cpu_count(), flush=True)
  peak = flops.matmul_peak()
  results["peak_start"] = peak
  print("\n1. fp32 matmul peak (best of tf.matmul 3000^3 and 8000x1000x8000, best window): "
        "%.1f GFLOP/s. Every %%peak below divides by it; column 'local GF' is the peak each "
        "model's own process measured right before its timed steps (lower: the shared machine "
        "was busier then)."
        % (peak / 1e9), flush=True)

  train = {}
  if "train" not in skip:
    print("\n2. training step, random inputs (compute only), README batch sizes")
    print("%-11s %6s %8s %8s %9s %9s  %7s  %6s %9s %8s %8s" % (
        "config", "batch", "params", "steps/s", "ex/s", "GF/ex", "GFLOP/s", "%peak",
        "s/step", "RSS MB", "local GF"))
    for key in keys:
      r = run_child("train", a, config=key)
      if r is None:
        continue
      train[key] = r
      rate = r["steps"] / r["seconds"]
      achieved = rate * r["batch"] * r["flops_per_example"]
      print("%-11s %6d %7.1fM %8.3f %9.1f %9.2f  %s %9.2f %8.0f %8.1f" % (
          key, r["batch"], r["params"] / 1e6, rate, rate * r["batch"],
          r["flops_per_example"] / 1e9, fmt_rate(achieved, peak), 1 / rate, r["rss_mb"],
          r["peak"] / 1e9),
          flush=True)
  results["train"] = train

  data_pattern = None
  if not {"reader", "e2e"} <= skip:
    data_pattern = generate_reader_data(os.path.join(a.workdir, "frames300"))

  if "e2e" not in skip and a.e2e_config in keys:
    r = run_child("e2e", a, config=a.e2e_config, data_pattern=data_pattern,
                  env=dict(TF_CPU_ALLOCATOR_USE_BFC="true"))
    if r is not None:
      rate = r["steps"] / r["seconds"]
      achieved = rate * r["batch"] * r["flops_per_example"]
      compute = train.get(a.e2e_config)
      versus = ""
      if compute:
        compute_rate = compute["steps"] / compute["seconds"]
        versus = " = %.2f of the compute-only step" % (rate / compute_rate)
      print("\n   end to end (%s, generated 300-frame data through the reader): %.3f steps/s, "
            "%.1f ex/s, %s GFLOP/s %%peak%s, RSS %.0f MB" % (
                a.e2e_config, rate, rate * r["batch"], fmt_rate(achieved, peak), versus,
                r["rss_mb"]), flush=True)
      results["e2e"] = r

  if "reader" not in skip:
    print("\n3. reader: frame-level pipeline (batch 80, shuffled, %d videos x 300 frames "
          "rgb+audio, in 4 files)" % READER_VIDEOS)
    results["reader"] = {}
    for bfc in ("false", "true"):
      r = run_child("reader", a, data_pattern=data_pattern,
                    env=dict(TF_CPU_ALLOCATOR_USE_BFC=bfc))
      if r is None:
        continue
      results["reader"][bfc] = r
      raw_mb = r["bytes"] / r["raw_seconds"] / 1e6
      videos = r["videos"] / r["decode_seconds"]
      decoded_mb = videos * r["bytes"] / READER_VIDEOS / 1e6
      print("   TF_CPU_ALLOCATOR_USE_BFC=%-5s raw read %7.0f MB/s | decode %7.1f videos/s "
            "(%6.0f MB/s of records = %.2f of raw)" % (bfc, raw_mb, videos, decoded_mb,
                                                       decoded_mb / raw_mb), flush=True)
    best = max((r["videos"] / r["decode_seconds"] for r in results["reader"].values()),
               default=0)
    if train and best:
      print("   decode vs. each config's training consumption (compute-only examples/s):")
      print("   " + "  ".join("%s %.1fx" % (k, best / (r["steps"] / r["seconds"] * r["batch"]))
                              for k, r in train.items()))

  if "inference" not in skip:
    print("\n4. inference (forward + top-50), random inputs; batch = min(README batch, %s); "
          "XLA as inference.py's --jit_compile=auto (float32, not for hidden layers of >= "
          "65536 inputs)"
          % (a.inference_batch_cap or "no cap"))
    print("%-11s %6s %-8s %9s %9s  %7s  %6s %8s %8s" % (
        "config", "batch", "dtype", "videos/s", "GF/video", "GFLOP/s", "%peak", "RSS MB",
        "local GF"))
    results["inference"] = {}
    for key in keys:
      readme_batch = int(readme_configs.flag_value(
          readme_configs.CONFIGS_BY_KEY[key].inference_args, "batch_size"))
      batch = min(readme_batch, a.inference_batch_cap) if a.inference_batch_cap else readme_batch
      for precision in a.inference_precisions.split(","):
        r = run_child("inference", a, config=key, precision=precision, batch=batch)
        if r is None:
          continue
        results["inference"]["%s/%s" % (key, precision)] = r
        rate = r["steps"] * r["batch"] / r["seconds"]
        print("%-11s %6d %-8s %9.1f %9.2f  %s %8.0f %8.1f" % (
            key, batch, precision, rate, r["flops_per_example"] / 1e9,
            fmt_rate(rate * r["flops_per_example"], peak), r["rss_mb"], r["peak"] / 1e9),
            flush=True)

  if "growth" not in skip:
    r = run_child("growth", a)
    if r is not None:
      results["growth"] = r
      print("\n5. cost growth (scaled NetVLAD: K=32, H=256, n=60, batch 32; one size doubles "
            "at a time)")
      print("%-22s %6s %12s %8s %12s %8s %10s" % ("doubling", "value", "train ms/ex",
                                                   "x prev", "infer ms/ex", "x prev",
                                                   "FLOPs x"))
      previous = None
      for row in r["rows"]:
        same = previous is not None and previous["name"] == row["name"]
        ratio = lambda key: ("%8.2f" % (row[key] / previous[key])) if same else "%8s" % "-"
        print("%-22s %6d %12.3f %s %12.3f %s %10s" % (
            row["name"], row["size"], row["train_ms"], ratio("train_ms"), row["infer_ms"],
            ratio("infer_ms"),
            ("%.2f" % (row["train_flops"] / previous["train_flops"])) if same else "-"))
        previous = row

  if "averaging" not in skip:
    videos = 700640 if a.full_averaging else 70064
    print("\n6. file_averaging (benchmarks/bench_file_averaging.py --videos=%d%s)" % (
        videos, "" if a.full_averaging else " --baseline_videos=7006; --full_averaging for "
        "the real test-set size"), flush=True)
    cmd = [sys.executable, os.path.join(HERE, "bench_file_averaging.py"), "--videos=%d" % videos,
           "--workdir=" + os.path.join(a.workdir, "averaging")]
    if not a.full_averaging:
      cmd.append("--baseline_videos=7006")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    print("\n".join("   " + l for l in proc.stdout.strip().splitlines()))
    if proc.returncode != 0:
      print("   (failed: %s)" % proc.stderr.strip()[-500:])

  if "ceiling" not in skip and "netvlad" in keys:
    print("\n7. kernel ceiling of the Gated NetVLAD training step (benchmarks/kernel_ceiling.py): "
          "each matrix product of the step timed alone at its shape", flush=True)
    r = run_child("ceiling", a, config="netvlad")
    if r is not None:
      import kernel_ceiling
      results["ceiling"] = r
      measured = train.get("netvlad")
      step = measured["seconds"] / measured["steps"] if measured else None
      print("\n".join("   " + line for line in kernel_ceiling.report(r, step)), flush=True)

  end_peak = flops.matmul_peak()
  results["peak_end"] = end_peak
  print("\nfp32 matmul peak at the end: %.1f GFLOP/s (%.2f of the start: the spread is the "
        "noise of the shared machine)" % (end_peak / 1e9, end_peak / peak))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
