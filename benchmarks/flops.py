"""Analytic FLOP counts of the WILLOW models (multiply-adds count 2), and the matmul peak.

Only the matrix products are counted: they are >95% of the arithmetic of every model here
(element-wise work such as batch norm, softmax, sigmoids and l2 normalization is O(B n K) or
O(B P) against the O(B n F K) or O(B P H) of the products next to it). Notation:
B batch, n sampled frames, F per-branch features (rgb 1024, audio 128), K clusters per branch,
P pooled size, H hidden size, V classes, M mixtures, U recurrent units.

Forward FLOPs per video (multiply by B for a batch):
  cluster assignment (every cluster model)   n F K 2          per branch
  VLAD/RVLAD aggregation (A^T X)              n F K 2          per branch
  FV first and second order                   2 n F K 2        per branch
  gated DBoF gate (max A) W1 W2               2 K F 2          rgb branch only
  hidden layer                                P H 2
  context gating                              H^2 2
  MoE head                                    D V (2M+1) 2     D = head input
  probability gating                          V^2 2
  LSTM, per step and layer                    2 (in+U) 4U
  GRU, per step and layer                     2 (in+U) 3U
Training = 3 x forward (each product has one forward and two backward products of the same
size: dX and dW; the first product's dX is needed too, for the input batch norm's gradient).
"""
import time
from typing import Dict

import numpy as np
import tensorflow as tf

from willow import models


def config_and_flags(key, overrides=None):
  """(ModelConfig, parsed FlagValues) of a README training line, scaled by `overrides`."""
  from absl import flags
  from willow import readme_configs
  from willow import script_flags
  willow = readme_configs.CONFIGS_BY_KEY[key]
  args = readme_configs.scaled_args(willow.train_args, overrides or {})
  values = flags.FlagValues()
  script_flags.define_flags("train", values)
  values(script_flags.expand_flag_prefixes(["prog"] + args, list(values)))
  return script_flags.model_config_from_flags(values), values


def _branch_clusters(cluster_size: int, sizes, divisor: int):
  return [cluster_size] + [max(cluster_size // divisor, 1)] * (len(sizes) - 1)


def _moe_flops(c: models.ModelConfig, head_input: int) -> float:
  v, m = c.num_classes, c.moe_num_mixtures
  if c.video_level_classifier_model == "LogisticModel":
    return 2.0 * head_input * v
  if c.moe_low_rank_gating > 0:
    gates = 2.0 * (head_input * c.moe_low_rank_gating + c.moe_low_rank_gating * v * (m + 1))
  else:
    gates = 2.0 * head_input * v * (m + 1)
  flops = gates + 2.0 * head_input * v * m
  if c.moe_prob_gating:
    flops += 2.0 * v * v
  return flops


def forward_flops_per_video(c: models.ModelConfig) -> Dict[str, float]:
  """{part: forward FLOPs per video} of a frame-level WILLOW model (matmuls only)."""
  n, sizes = c.iterations, c.feature_sizes
  parts = {}
  if c.model in ("NetVLADModelLF", "NetFVModelLF"):
    fv = c.model == "NetFVModelLF"
    k_total = c.fv_cluster_size if fv else c.netvlad_cluster_size
    hidden = c.fv_hidden_size if fv else c.netvlad_hidden_size
    clusters = _branch_clusters(k_total, sizes, 2)
    parts["assignment"] = sum(2.0 * n * f * k for f, k in zip(sizes, clusters))
    parts["aggregation"] = (2 if fv else 1) * parts["assignment"]
    pooled = (2 if fv else 1) * sum(f * k for f, k in zip(sizes, clusters))
    parts["hidden"] = 2.0 * pooled * hidden
    if c.gating:
      parts["context_gate"] = 2.0 * hidden * hidden
    parts["head"] = _moe_flops(c, hidden)
  elif c.model in ("GatedDbofModelLF", "SoftDbofModelLF"):
    clusters = _branch_clusters(c.dbof_cluster_size, sizes, 8)
    parts["assignment"] = sum(2.0 * n * f * k for f, k in zip(sizes, clusters))
    if c.model == "GatedDbofModelLF":
      parts["dbof_gate"] = 2.0 * 2 * clusters[0] * sizes[0]
    pooled = sum(clusters) * (2 if (c.softdbof_maxpool and c.model == "SoftDbofModelLF") else 1)
    head_input = pooled
    if c.fc_dimred:
      parts["hidden"] = 2.0 * pooled * c.dbof_hidden_size
      head_input = c.dbof_hidden_size
    parts["head"] = _moe_flops(c, head_input)
  elif c.model in ("LstmModel", "GruModel"):
    lstm = c.model == "LstmModel"
    units = c.lstm_cells if lstm else c.gru_cells
    layers = c.lstm_layers if lstm else c.gru_layers
    random_sequence = c.lstm_random_sequence if lstm else c.gru_random_sequence
    steps = c.iterations if random_sequence else 300
    gates = 4 if lstm else 3
    inputs = [c.input_size] + [units] * (layers - 1)
    parts["recurrent"] = sum(2.0 * (i + units) * gates * units for i in inputs) * steps
    parts["head"] = _moe_flops(c, (2 if lstm else 1) * units * layers)
  else:
    raise ValueError("no FLOP formula for %s" % c.model)
  return parts


def training_flops_per_video(c: models.ModelConfig) -> float:
  return 3.0 * sum(forward_flops_per_video(c).values())


def inference_flops_per_video(c: models.ModelConfig) -> float:
  return sum(forward_flops_per_video(c).values())


# Shapes whose best product rate is taken as the matmul peak: a square one and a wide one like
# the models' frames x features by features x clusters. Not powers of two: on this CPU a
# 2048^3 product runs at 0.65-0.7x and 8192x1024x8192 at half the rate of 3000^3 or
# 8000x1000x8000 (rows 2^k floats apart share cache sets), so a power-of-two "peak"
# understates the machine by ~1.5x (as the first BENCHMARKS.md table did).
PEAK_SHAPES = ((3000, 3000, 3000), (8000, 1000, 8000))


def matmul_peak(seconds: float = 3.0, dtype=tf.float32, shapes=PEAK_SHAPES) -> float:
  """The machine's practical matmul peak for the dtype: the best FLOP/s of tf.matmul over
  `shapes` (m, k, n), each timed for about seconds / len(shapes), best 0.5-1 s window
  (other processes share the machine, so the best window is the nearest to the hardware)."""
  return max(_matmul_rate(shape, seconds / len(shapes), dtype) for shape in shapes)


def _matmul_rate(shape, seconds: float, dtype) -> float:
  m, k, n = shape
  a = tf.random.normal([m, k], dtype=dtype)
  b = tf.random.normal([k, n], dtype=dtype) / np.sqrt(k)

  @tf.function
  def products(repeats):
    total = tf.zeros([], dtype)
    for _ in tf.range(repeats):
      total += tf.reduce_sum(tf.matmul(a, b)[:1])  # a scalar: no big copy out
    return total

  products(tf.constant(1)).numpy()  # trace + warm up
  flop = 2.0 * m * k * n
  best, deadline = 0.0, time.perf_counter() + seconds
  repeats = 1
  while time.perf_counter() < deadline:
    start = time.perf_counter()
    products(tf.constant(repeats)).numpy()
    elapsed = time.perf_counter() - start
    best = max(best, flop * repeats / elapsed)
    if elapsed < 0.5:
      repeats *= 2
  return best
