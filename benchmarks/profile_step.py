"""Where a training step's time goes: seconds a step, and the op-level split of a profiled step
into matrix products / the optimizer's update / everything else, with the most expensive
other ops.

A README configuration at full size is trained on random inputs from memory (compute only,
like the original's baseline tool), timed over --steps steps, then --profile_steps more steps
are traced with tf.profiler and the host events are summed by op type. Op times are summed
over both cores' threads, so the split is of CPU time, not of wall time.

Usage: python benchmarks/profile_step.py [--config=netvlad] [--jit_compile=false]
    [--mixed_precision=none] [--steps=4] [--profile_steps=2] [--top=10]
"""
import argparse
import collections
import glob
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import willow.tf_env  # noqa: E402,F401  (before TensorFlow loads)
import tensorflow as tf  # noqa: E402

# Op types that are matrix products (TensorFlow's and oneDNN's names).
PRODUCT_TYPES = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "_MklMatMul",
                 "_MklBatchMatMulV2", "_FusedMatMul", "_MklFusedMatMul", "Einsum",
                 "_MklNativeFusedMatMul", "_MklNativeMatMul", "_MklNativeBatchMatMulV2")
OPTIMIZER_TYPES = ("ResourceApplyAdam", "ApplyAdam")
# Events that enclose other ops (a function call, the executor): not counted themselves.
ENCLOSING_TYPES = ("PartitionedCall", "StatefulPartitionedCall", "While", "If",
                   "StatelessIf", "StatelessWhile", "_XlaRun", "_XlaCompile")


def time_steps(step, steps: int, warmup: int = 2):
  for _ in range(warmup):
    step()
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
  return seconds


def op_seconds(logdir: str):
  """{op type: summed seconds} of the host's TensorFlow op events in a profile, plus XLA
  thunks as 'xla:<name prefix>'."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  totals = collections.Counter()
  for path in glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")):
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
      space.ParseFromString(f.read())
    for plane in space.planes:
      if not plane.name.startswith("/host:CPU"):
        continue
      names = {k: m.name for k, m in plane.event_metadata.items()}
      for line in plane.lines:
        for event in line.events:
          name = names.get(event.metadata_id, "")
          op_type = _op_type(name)
          if op_type and op_type not in ENCLOSING_TYPES:
            totals[op_type] += event.duration_ps * 1e-12
  return totals


def _op_type(event_name: str):
  """'scope/name:Type' -> 'Type' (TensorFlow op events); None for other host events."""
  if ":" not in event_name or event_name.startswith(("$", "Tfrt", "Executor")):
    return None
  op_type = event_name.rsplit(":", 1)[1].strip()
  if not op_type or op_type.startswith("__") or op_type == "Run":  # function calls
    return None
  return op_type if op_type[0].isupper() or op_type.startswith("_") else None


def split(totals, top: int):
  products = sum(v for k, v in totals.items() if k in PRODUCT_TYPES)
  optimizer = sum(v for k, v in totals.items() if k in OPTIMIZER_TYPES)
  others = collections.Counter({k: v for k, v in totals.items()
                                if k not in PRODUCT_TYPES and k not in OPTIMIZER_TYPES})
  return products, optimizer, others


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="netvlad")
  parser.add_argument("--jit_compile", default="false", choices=("auto", "true", "false"))
  parser.add_argument("--mixed_precision", default="none", choices=("none", "bf16"))
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--profile_steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=10)
  a = parser.parse_args()
  import flops
  from run_benchmarks import _make_trainer, _random_batch
  config, values = flops.config_and_flags(a.config)
  trainer = _make_trainer(config, values.batch_size, jit_compile=a.jit_compile,
                          mixed_precision=a.mixed_precision)
  batch = _random_batch(config, values.batch_size)
  step = lambda: float(trainer.train_step(batch)["total_loss"])
  seconds = time_steps(step, a.steps)
  print("%s batch %d, --jit_compile=%s --mixed_precision=%s: %.2f s a step (median of %d: %s)"
        % (a.config, values.batch_size, a.jit_compile, a.mixed_precision,
           statistics.median(seconds), len(seconds), " ".join("%.2f" % s for s in seconds)),
        flush=True)
  if a.profile_steps < 1:
    return
  logdir = tempfile.mkdtemp(prefix="willow-profile-")
  tf.profiler.experimental.start(logdir)
  for _ in range(a.profile_steps):
    step()
  tf.profiler.experimental.stop()
  n = a.profile_steps
  products, optimizer, others = split(op_seconds(logdir), a.top)
  total = products + optimizer + sum(others.values())
  print("op CPU seconds a step (profiled %d steps): products %.2f, optimizer %.2f, other %.2f"
        " (%.0f%%)" % (n, products / n, optimizer / n, (total - products - optimizer) / n,
                       100 * (total - products - optimizer) / max(total, 1e-9)))
  for op_type, value in others.most_common(a.top):
    print("  %-28s %6.3f s" % (op_type, value / n))


if __name__ == "__main__":
  main()
