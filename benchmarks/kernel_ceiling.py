"""How fast could a NetVLAD/NetFV training step be with this machine's matrix-product kernels?

Every matrix product of the training step (each forward product C = A B and its two
gradients dA = dC B^T and dB = A^T dC, in the transposes TensorFlow's gradients use) is timed
alone at the step's shapes with TensorFlow's kernel, with XLA, and with numpy's BLAS (OpenBLAS
in the numpy wheel) as a reference for the same hardware. Their sum, plus one fused Adam
update (ResourceApplyAdam) of the model's parameters, is a lower bound on the step's time:
everything else the step does (batch norms, softmax, normalizations, clipping) is left out.
The analytic training FLOPs (flops.py) divided by that bound is the most a step could reach
with these kernels: the ceiling that the %peak of the training table is to be read against.

Run alone: python benchmarks/kernel_ceiling.py [--config=netvlad] [--seconds=0.6]
"""
import argparse
import dataclasses
import json
import os
import sys
import time
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import willow.tf_env  # noqa: E402,F401  (before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Product:
  """One (optionally batched) product: [batch] x ([m, k] x [k, n]) with stored transposes."""
  name: str
  m: int
  k: int
  n: int
  batch: Optional[int] = None
  transpose_a: bool = False
  transpose_b: bool = False

  @property
  def flops(self) -> float:
    return 2.0 * (self.batch or 1) * self.m * self.k * self.n

  def operand_shapes(self):
    a = [self.k, self.m] if self.transpose_a else [self.m, self.k]
    b = [self.n, self.k] if self.transpose_b else [self.k, self.n]
    prefix = [self.batch] if self.batch else []
    return prefix + a, prefix + b

  def describe(self) -> str:
    shape = "%dx%dx%d" % (self.m, self.k, self.n)
    flags = "".join(t for t, on in (("Ta", self.transpose_a), ("Tb", self.transpose_b)) if on)
    return ("%d x %s" % (self.batch, shape) if self.batch else shape) + (" " + flags if flags
                                                                          else "")


def with_gradients(name, m, k, n, batch=None, transpose_a=False) -> List[Product]:
  """A forward product and the two products of its gradient (tf.linalg.matmul's)."""
  forward = Product(name, m, k, n, batch, transpose_a=transpose_a)
  if transpose_a:  # C = A^T B with A stored [k, m]: dA = B dC^T [k, m], dB = A dC [k, n]
    return [forward, Product(name + " dA", k, n, m, batch, transpose_b=True),
            Product(name + " dB", k, m, n, batch)]
  return [forward, Product(name + " dA", m, n, k, batch, transpose_b=True),
          Product(name + " dB", k, m, n, batch, transpose_a=True)]


def training_products(config, batch: int) -> List[Product]:
  """The matrix products of a NetVLAD / NetFV training step (the shapes of
  frame_level_models.py's ClusterModel)."""
  import flops
  fv = config.model == "NetFVModelLF"
  sizes = config.feature_sizes
  clusters = flops._branch_clusters(
      config.fv_cluster_size if fv else config.netvlad_cluster_size, sizes, 2)
  hidden = config.fv_hidden_size if fv else config.netvlad_hidden_size
  n = config.iterations
  products = []
  for name, f, k in zip(config.feature_names, sizes, clusters):
    products += with_gradients("%s assignment" % name, batch * n, f, k)
    for order in (("first ", "second ") if fv else ("",)):
      products += with_gradients("%s %saggregation" % (name, order), f, n, k, batch,
                                 transpose_a=True)
  pooled = (2 if fv else 1) * sum(f * k for f, k in zip(sizes, clusters))
  products += with_gradients("hidden", batch, pooled, hidden)
  if config.gating:
    products += with_gradients("context gate", batch, hidden, hidden)
  v, mixtures = config.num_classes, config.moe_num_mixtures
  products += with_gradients("MoE gates", batch, hidden, v * (mixtures + 1))
  products += with_gradients("MoE experts", batch, hidden, v * mixtures)
  if config.moe_prob_gating:
    products += with_gradients("probability gate", batch, v, v)
  return products


def _best_seconds(run, seconds: float) -> float:
  """Best time of run() over repeats lasting about `seconds` (after one warm-up call)."""
  run()
  best, deadline = float("inf"), time.perf_counter() + seconds
  while True:
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
    if time.perf_counter() > deadline:
      return best


def time_product(p: Product, seconds: float):
  """(TensorFlow s, XLA s, numpy s) of one product; the result is reduced to a scalar so that
  no large copy leaves the kernel."""
  shape_a, shape_b = p.operand_shapes()
  a = tf.random.normal(shape_a)
  b = tf.random.normal(shape_b)

  def product(x, y):
    return tf.reduce_sum(tf.matmul(x, y, transpose_a=p.transpose_a,
                                   transpose_b=p.transpose_b)[..., :1, :1])

  times = []
  for jit in (False, True):
    fn = tf.function(product, jit_compile=jit, autograph=False)
    times.append(_best_seconds(lambda: fn(a, b).numpy(), seconds))
  a_np, b_np = a.numpy(), b.numpy()
  swap = lambda x, on: np.swapaxes(x, -1, -2) if on else x
  times.append(_best_seconds(
      lambda: np.matmul(swap(a_np, p.transpose_a), swap(b_np, p.transpose_b)), seconds))
  return times


def adam_update_seconds(model, seconds: float) -> float:
  """One update of every trainable variable by the trainer's Adam (train_step.FusedAdam:
  ResourceApplyAdam reads var, m, v, grad and writes var, m, v), the least memory traffic a
  TF Adam step can have."""
  from willow import train_step
  variables = model.trainable_variables
  optimizer = train_step.FusedAdam(1e-4, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
  optimizer.build(variables)
  grads = [tf.random.normal(v.shape, stddev=1e-3) for v in variables]

  @tf.function(autograph=False)
  def update():
    optimizer.apply_gradients(zip(grads, variables))
    return tf.constant(0)

  return _best_seconds(lambda: update().numpy(), seconds)


def measure(key: str, seconds: float) -> dict:
  import flops
  from willow import models
  config, values = flops.config_and_flags(key)
  batch = values.batch_size
  peak = flops.matmul_peak()
  rows = []
  for p in training_products(config, batch):
    tf_s, xla_s, np_s = time_product(p, seconds)
    rows.append(dict(name=p.name, shape=p.describe(), flops=p.flops, tf=tf_s, xla=xla_s,
                     numpy=np_s))
  model = models.build_model(config)
  adam = adam_update_seconds(model, max(seconds, 2.0))
  return dict(config=key, batch=batch, peak=peak, rows=rows, adam=adam,
              params=model.num_trainable_parameters,
              step_flops=batch * flops.training_flops_per_video(config))


def report(r: dict, measured_step: Optional[float] = None) -> List[str]:
  """The table's lines: each product's rate, then the ceilings of the step. %pk divides by
  the peak measured in the same process, right before the products."""
  peak = r["peak"]
  rate = lambda flop, s: "%6.1f %5.1f%%" % (flop / s / 1e9, 100.0 * flop / s / peak)
  lines = ["%-28s %-26s %7s  %-12s  %-12s  %-12s" % (
      "product", "shape (m x k x n)", "GFLOP", "TF GF/s %pk", "XLA", "numpy BLAS")]
  for row in r["rows"]:
    lines.append("%-28s %-26s %7.2f  %s  %s  %s" % (
        row["name"], row["shape"], row["flops"] / 1e9, rate(row["flops"], row["tf"]),
        rate(row["flops"], row["xla"]), rate(row["flops"], row["numpy"])))
  products = sum(row["flops"] for row in r["rows"])
  best_tf = sum(min(row["tf"], row["xla"]) for row in r["rows"])
  blas = sum(row["numpy"] for row in r["rows"])
  step = r["step_flops"]
  lines.append("products: %.1f GFLOP a step (flops.py counts %.1f)" % (products / 1e9, step / 1e9))
  lines.append("fused Adam update of %.0fM parameters (ResourceApplyAdam): %.2f s" % (
      r["params"] / 1e6, r["adam"]))
  for label, seconds in (("TensorFlow's kernels (best of TF and XLA per product)", best_tf),
                         ("numpy's BLAS for the products", blas)):
    bound = seconds + r["adam"]
    lines.append("ceiling with %s: products %.2f s + update %.2f s = %.2f s a step -> "
                 "%.1f%% of the peak" % (label, seconds, r["adam"], bound,
                                         100.0 * step / bound / peak))
  if measured_step:
    lines.append("measured step %.2f s = %.1f%% of the peak, %.2f of the TensorFlow ceiling" % (
        measured_step, 100.0 * step / measured_step / peak,
        (best_tf + r["adam"]) / measured_step))
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="netvlad")
  parser.add_argument("--seconds", type=float, default=0.6,
                      help="timing window per product and backend")
  parser.add_argument("--json", action="store_true", help="print one JSON line instead")
  a = parser.parse_args()
  r = measure(a.config, a.seconds)
  if a.json:
    print(json.dumps(r))
    return
  print("matmul peak %.1f GFLOP/s; %s at batch %d" % (r["peak"] / 1e9, r["config"], r["batch"]))
  print("\n".join(report(r)))


if __name__ == "__main__":
  main()
