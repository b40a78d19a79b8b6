"""An independent numpy statement of the original WILLOW models, for the checkpoint tests.

It speaks the original's language: the variables are a dict keyed by the names the original
TF1 train.py saved (listed here from the original's source, independently of
checkpoint_import.py), and the forward pass restates the original's frame_level_models.py and
video_level_models.py (l2-normalized input, cluster pooling, MoE, LSTM/GRU) on those arrays.
Nothing here imports the project's model code.

Only the original's two-branch layout is covered: the first feature is the "video" branch, the
second the "audio" branch, as `--feature_names=rgb,audio` gives.
"""
from typing import Dict, Tuple

import numpy as np

BN_EPSILON = 1e-3
BN_DECAY = 0.999
LOSS_EPSILON = 1e-5
BN_PARTS = ("beta", "gamma", "moving_mean", "moving_variance")


# ----------------------------------------------------------------------------------------
# The original's variable names and shapes.

def _bn(shapes, scope, channels):
  for part in BN_PARTS:
    shapes["%s/%s" % (scope, part)] = (channels,)


def _hidden_and_gating(shapes, pooled, hidden, relu, gating):
  shapes["hidden1_weights"] = (pooled, hidden)
  if relu:  # with batch norm, the only form the original could run
    _bn(shapes, "hidden1_bn", hidden)
  else:
    shapes["hidden1_biases"] = (hidden,)
  if gating:
    shapes["gating_weights_2"] = (hidden, hidden)
    _bn(shapes, "gating_bn", hidden)


def _moe(shapes, c, inputs):
  width = c.num_classes * (c.moe_num_mixtures + 1)
  if c.moe_low_rank_gating == -1:
    shapes["gates/weights"] = (inputs, width)
  else:
    shapes["gates1/weights"] = (inputs, c.moe_low_rank_gating)
    shapes["gates2/weights"] = (c.moe_low_rank_gating, width)
  shapes["experts/weights"] = (inputs, c.num_classes * c.moe_num_mixtures)
  shapes["experts/biases"] = (c.num_classes * c.moe_num_mixtures,)
  if c.moe_prob_gating:
    rows = c.num_classes if c.moe_prob_gating_input == "prob" else inputs
    shapes["gating_prob_weights"] = (rows, c.num_classes)
    _bn(shapes, "gating_prob_bn", c.num_classes)


def _branches(c, suffix, divisor):
  (fv, fa), k = c.feature_sizes, _clusters(c)
  return [("video_" + suffix, fv, k), ("audio_" + suffix, fa, k // divisor)]


def _clusters(c):
  if c.model == "NetVLADModelLF":
    return c.netvlad_cluster_size
  if c.model == "NetFVModelLF":
    return c.fv_cluster_size
  return c.dbof_cluster_size


def original_variable_shapes(c, rnn_names=("kernel", "bias")) -> Dict[str, Tuple[int, ...]]:
  """{name: shape} of every model variable the original's Saver wrote for configuration c.

  rnn_names: ("kernel", "bias") as TF >= 1.2 named the RNN cells' variables, or
  ("weights", "biases") as TF 1.0 and 1.1 did.
  """
  shapes = {}
  if c.model in ("NetVLADModelLF", "NetFVModelLF", "GatedDbofModelLF", "SoftDbofModelLF"):
    _bn(shapes, "input_bn", sum(c.feature_sizes))
  if c.model == "NetVLADModelLF":
    pooled = 0
    for scope, f, k in _branches(c, "VLAD", 2):
      shapes[scope + "/cluster_weights"] = (f, k)
      _bn(shapes, scope + "/cluster_bn", k)
      if c.lightvlad:
        pass
      elif c.vlagd:
        shapes[scope + "/gate_weights"] = (1, k, f)
      else:
        shapes[scope + "/cluster_weights2"] = (1, f, k)
      pooled += f * k
    _hidden_and_gating(shapes, pooled, c.netvlad_hidden_size, c.netvlad_relu, c.gating)
    _moe(shapes, c, c.netvlad_hidden_size)
  elif c.model == "NetFVModelLF":
    pooled = 0
    for scope, f, k in _branches(c, "FV", 2):
      shapes[scope + "/cluster_weights"] = (f, k)
      shapes[scope + "/covar_weights"] = (f, k)
      _bn(shapes, scope + "/cluster_bn", k)
      if not c.fv_couple_weights:
        shapes[scope + "/cluster_weights2"] = (1, f, k)
      pooled += 2 * f * k
    _hidden_and_gating(shapes, pooled, c.fv_hidden_size, c.fv_relu, c.gating)
    _moe(shapes, c, c.fv_hidden_size)
  elif c.model in ("GatedDbofModelLF", "SoftDbofModelLF"):
    pooled = 0
    for index, (scope, f, k) in enumerate(_branches(c, "DBOF", 8)):
      shapes[scope + "/cluster_weights"] = (f, k)
      _bn(shapes, scope + "/cluster_bn", k)
      if index == 0 and c.model == "GatedDbofModelLF":
        shapes[scope + "/dim_red"] = (k, f)
        shapes[scope + "/cluster_weights_2"] = (f, k)
        _bn(shapes, scope + "/cluster_bn_2", k)
        pooled += k
      else:
        pooled += k * (2 if c.softdbof_maxpool else 1)
    if c.fc_dimred:
      _hidden_and_gating(shapes, pooled, c.dbof_hidden_size, c.dbof_relu, gating=False)
      pooled = c.dbof_hidden_size
    _moe(shapes, c, pooled)
  elif c.model in ("LstmModel", "GruModel"):
    lstm = c.model == "LstmModel"
    units, layers = (c.lstm_cells, c.lstm_layers) if lstm else (c.gru_cells, c.gru_layers)
    kernel, bias = rnn_names
    inputs = sum(c.feature_sizes)
    for i in range(layers):
      cell = "RNN/rnn/multi_rnn_cell/cell_%d/%s" % (i, "basic_lstm_cell" if lstm else "gru_cell")
      rows = (inputs if i == 0 else units) + units
      if lstm:
        shapes["%s/%s" % (cell, kernel)] = (rows, 4 * units)
        shapes["%s/%s" % (cell, bias)] = (4 * units,)
      else:
        shapes["%s/gates/%s" % (cell, kernel)] = (rows, 2 * units)
        shapes["%s/gates/%s" % (cell, bias)] = (2 * units,)
        shapes["%s/candidate/%s" % (cell, kernel)] = (rows, units)
        shapes["%s/candidate/%s" % (cell, bias)] = (units,)
    _moe(shapes, c, units * layers * (2 if lstm else 1))
  else:
    raise ValueError("no reference for %s" % c.model)
  return shapes


def is_statistic(name: str) -> bool:
  return name.endswith("/moving_mean") or name.endswith("/moving_variance")


# ----------------------------------------------------------------------------------------
# Random values at scales where every variable visibly changes the predictions.

def _random_value(name, shape, rng):
  leaf = name.rsplit("/", 1)[-1]
  scope = name.rsplit("/", 2)[-2] if "/" in name else ""
  rows = shape[0] if shape else 1
  if leaf == "beta":
    return rng.normal(0.0, 0.3, shape)
  if leaf == "gamma":
    return rng.uniform(0.5, 2.0, shape)
  if leaf == "moving_mean":
    return np.zeros(shape)
  if leaf == "moving_variance":
    return np.ones(shape)
  if leaf == "covar_weights":
    return rng.normal(1.0, 0.3, shape)
  if leaf in ("cluster_weights", "dim_red", "cluster_weights_2"):
    return rng.normal(0.0, 1 / np.sqrt(rows), shape)
  if leaf == "gate_weights":
    return rng.normal(0.0, 1.0, shape)
  if leaf == "hidden1_weights":
    return rng.normal(0.0, 1.0, shape)
  if leaf in ("gating_weights_2", "gating_prob_weights"):
    return rng.normal(0.0, 1 / np.sqrt(rows), shape)
  if name.startswith("RNN/"):
    if scope == "gates" and leaf in ("bias", "biases"):  # TF1 started GRU gates at 1
      return rng.normal(1.0, 0.3, shape)
    if leaf in ("kernel", "weights"):
      return rng.normal(0.0, 0.5, shape)
    return rng.normal(0.0, 0.3, shape)
  if scope in ("gates", "gates1", "gates2", "experts") and leaf == "weights":
    return rng.normal(0.0, 2 / np.sqrt(rows), shape)
  return rng.normal(0.0, 0.3, shape)


def random_values(shapes, seed=0) -> Dict[str, np.ndarray]:
  """Random float32 values for every name; batch-norm statistics at 0/1 until calibrated."""
  rng = np.random.RandomState(seed)
  return {name: _random_value(name, shape, rng).astype(np.float32)
          for name, shape in sorted(shapes.items())}


def calibrate_statistics(c, values, raw, num_frames, seed=1):
  """Sets each batch norm's moving statistics near the batch statistics of its input on
  (raw, num_frames), perturbed, so that inference-mode normalization is neither trivial nor
  saturating and differs from training mode."""
  rng = np.random.RandomState(seed)
  _, stats = forward(c, values, raw, num_frames, training=True)
  for scope, (mean, variance) in stats.items():
    std = np.sqrt(variance + BN_EPSILON)
    values[scope + "/moving_mean"] = (mean + rng.normal(0, 0.2, mean.shape) * std).astype(
        np.float32)
    values[scope + "/moving_variance"] = (variance * rng.uniform(0.6, 1.6, variance.shape)
                                          + 1e-4).astype(np.float32)
  return values


# ----------------------------------------------------------------------------------------
# The forward pass (the original's frame_level_models.py and video_level_models.py).

def l2n(x, axis=-1):
  return x / np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def relu6(x):
  return np.minimum(np.maximum(x, 0), 6)


def evenly_spaced_indices(num_frames, n):
  """Our deterministic sampler: index_j = floor((j + 0.5) * num_frames / n)."""
  j = np.arange(n)
  idx = ((2 * j[None, :] + 1) * num_frames[:, None]) // (2 * n)
  return np.clip(idx, 0, np.maximum(num_frames - 1, 0)[:, None])


class _Net:
  """One forward pass: reads weights by TF1 name, records batch statistics in training."""

  def __init__(self, c, values, training, dtype):
    self.c, self.training, self.dtype = c, training, dtype
    self.values = values
    self.stats = {}

  def w(self, name):
    return np.asarray(self.values[name], self.dtype)

  def bn(self, scope, x):
    if self.training:
      mean, variance = x.mean(axis=0), x.var(axis=0)
      self.stats[scope] = (mean, variance)
    else:
      mean, variance = self.w(scope + "/moving_mean"), self.w(scope + "/moving_variance")
    return (x - mean) / np.sqrt(variance + BN_EPSILON) * self.w(scope + "/gamma") + self.w(
        scope + "/beta")

  # -- pooling (x: [B, n, F]) ------------------------------------------------------------

  def assignments(self, scope, x):
    b, n, f = x.shape
    logits = x.reshape(b * n, f) @ self.w(scope + "/cluster_weights")
    return softmax(self.bn(scope + "/cluster_bn", logits)).reshape(b, n, -1)

  def vlad(self, scope, x):
    a = self.assignments(scope, x)
    v = np.einsum("bnk,bnf->bfk", a, x)  # [B, F, K]
    if self.c.lightvlad:
      pass
    elif self.c.vlagd:
      v = v * np.transpose(sigmoid(self.w(scope + "/gate_weights")), (0, 2, 1))
    else:
      v = v - a.sum(axis=1)[:, None, :] * self.w(scope + "/cluster_weights2")
    return l2n(l2n(v, axis=1).reshape(len(x), -1))  # flat index f*K + k

  def fisher(self, scope, x):
    a = self.assignments(scope, x)
    mass = a.sum(axis=1)[:, None, :]
    if self.c.fv_couple_weights:
      mu = self.c.fv_coupling_factor * self.w(scope + "/cluster_weights")[None]
    else:
      mu = self.w(scope + "/cluster_weights2")
    sigma = np.square(self.w(scope + "/covar_weights")) + 1e-6
    first = np.einsum("bnk,bnf->bfk", a, x)
    second = np.einsum("bnk,bnf->bfk", a, x * x)
    fv1 = (first - mass * mu) / sigma
    fv2 = (second - 2 * mu * first + mass * mu * mu) / (sigma * sigma) - mass
    return np.concatenate([l2n(l2n(fv1, axis=1).reshape(len(x), -1)),
                           l2n(fv2.reshape(len(x), -1))], axis=1)

  def soft_dbof(self, scope, x):
    a = self.assignments(scope, x)
    out = l2n(a.sum(axis=1))
    if self.c.softdbof_maxpool:
      out = np.concatenate([out, l2n(a.max(axis=1))], axis=1)
    return out

  def gated_dbof(self, scope, x):
    a = self.assignments(scope, x)
    summed, maxed = a.sum(axis=1), l2n(a.max(axis=1))
    z = maxed @ self.w(scope + "/dim_red") @ self.w(scope + "/cluster_weights_2")
    return l2n(sigmoid(self.bn(scope + "/cluster_bn_2", z)) * summed)

  # -- heads -----------------------------------------------------------------------------

  def hidden(self, v, relu, gating):
    h = v @ self.w("hidden1_weights")
    if relu:
      h = relu6(self.bn("hidden1_bn", h))
    else:
      h = h + self.w("hidden1_biases")
    if gating:
      g = self.w("gating_weights_2")
      z = h @ g
      if self.c.gating_remove_diag:
        z = z - np.diag(g) * h
      h = h * sigmoid(self.bn("gating_bn", z))
    return h

  def moe(self, h):
    c, m = self.c, self.c.moe_num_mixtures
    if c.moe_low_rank_gating == -1:
      gate_logits = h @ self.w("gates/weights")
    else:
      gate_logits = h @ self.w("gates1/weights") @ self.w("gates2/weights")
    expert_logits = h @ self.w("experts/weights") + self.w("experts/biases")
    gates = softmax(gate_logits.reshape(-1, m + 1))  # class-major: column c*(M+1)+m
    experts = sigmoid(expert_logits.reshape(-1, m))
    p = (gates[:, :m] * experts).sum(axis=1).reshape(len(h), c.num_classes)
    if c.moe_prob_gating:
      wp = self.w("gating_prob_weights")
      z = (p if c.moe_prob_gating_input == "prob" else h) @ wp
      if c.gating_remove_diag:
        z = z - np.diag(wp) * p
      p = p * sigmoid(self.bn("gating_prob_bn", z))
    return p

  # -- models ----------------------------------------------------------------------------

  def cluster_model(self, x, num_frames):
    c = self.c
    frames = np.stack([x[b, i] for b, i in
                       enumerate(evenly_spaced_indices(num_frames, c.iterations))])
    b, n, d = frames.shape
    frames = self.bn("input_bn", frames.reshape(b * n, d)).reshape(b, n, d)
    video, audio = frames[:, :, :c.feature_sizes[0]], frames[:, :, c.feature_sizes[0]:]
    if c.model == "NetVLADModelLF":
      v = np.concatenate([self.vlad("video_VLAD", video), self.vlad("audio_VLAD", audio)], 1)
      return self.moe(self.hidden(v, c.netvlad_relu, c.gating))
    if c.model == "NetFVModelLF":
      v = np.concatenate([self.fisher("video_FV", video), self.fisher("audio_FV", audio)], 1)
      return self.moe(self.hidden(v, c.fv_relu, c.gating))
    first = self.gated_dbof if c.model == "GatedDbofModelLF" else self.soft_dbof
    v = np.concatenate([first("video_DBOF", video), self.soft_dbof("audio_DBOF", audio)], 1)
    if c.fc_dimred:
      v = self.hidden(v, c.dbof_relu, gating=False)
    return self.moe(v)

  def rnn_model(self, x, num_frames, rnn_names):
    c = self.c
    lstm = c.model == "LstmModel"
    units, layers = (c.lstm_cells, c.lstm_layers) if lstm else (c.gru_cells, c.gru_layers)
    random_sequence = c.lstm_random_sequence if lstm else c.gru_random_sequence
    backward = c.lstm_backward if lstm else c.gru_backward
    if random_sequence:
      x = np.stack([x[b, i] for b, i in
                    enumerate(evenly_spaced_indices(num_frames, c.iterations))])
    lengths = np.minimum(num_frames, x.shape[1])
    if backward:
      x = x.copy()
      for b, n in enumerate(lengths):
        x[b, :n] = x[b, :n][::-1]
    kernel, bias = rnn_names
    features = []
    for i in range(layers):
      cell = "RNN/rnn/multi_rnn_cell/cell_%d/%s" % (i, "basic_lstm_cell" if lstm else "gru_cell")
      batch = len(x)
      h = np.zeros((batch, units), self.dtype)
      cell_state = np.zeros((batch, units), self.dtype)
      outputs = np.zeros((batch, x.shape[1], units), self.dtype)
      for t in range(x.shape[1]):
        alive = (t < lengths)[:, None]
        xh = np.concatenate([x[:, t], h], axis=1)
        if lstm:
          z = xh @ self.w("%s/%s" % (cell, kernel)) + self.w("%s/%s" % (cell, bias))
          i_, j_, f_, o_ = np.split(z, 4, axis=1)
          new_c = cell_state * sigmoid(f_ + 1.0) + sigmoid(i_) * np.tanh(j_)
          new_h = np.tanh(new_c) * sigmoid(o_)
          cell_state = np.where(alive, new_c, cell_state)
        else:
          ru = sigmoid(xh @ self.w("%s/gates/%s" % (cell, kernel))
                       + self.w("%s/gates/%s" % (cell, bias)))
          r, u = np.split(ru, 2, axis=1)
          cand = np.tanh(np.concatenate([x[:, t], r * h], axis=1)
                         @ self.w("%s/candidate/%s" % (cell, kernel))
                         + self.w("%s/candidate/%s" % (cell, bias)))
          new_h = u * h + (1 - u) * cand
        h = np.where(alive, new_h, h)
        outputs[:, t] = np.where(alive, new_h, 0)
      features += [cell_state, h] if lstm else [h]
      x = outputs
    return self.moe(np.concatenate(features, axis=1))


def forward(c, values, raw, num_frames, training=False, dtype=np.float64):
  """Predictions [B, V] of configuration c with the original's variables `values` on raw
  features [B, T, D] with num_frames [B]; and {bn scope: (batch mean, batch variance)} when
  training (batch norm on batch statistics; frame sampling as at inference). The RNN cells'
  variables may have either TF1 naming (kernel/bias or weights/biases)."""
  legacy = any(n.startswith("RNN/") and n.endswith("/weights") for n in values)
  rnn_names = ("weights", "biases") if legacy else ("kernel", "bias")
  net = _Net(c, values, training, dtype)
  x = l2n(np.asarray(raw, dtype))
  num_frames = np.asarray(num_frames)
  if c.model in ("LstmModel", "GruModel"):
    p = net.rnn_model(x, num_frames, rnn_names)
  else:
    p = net.cluster_model(x, num_frames)
  return p, net.stats


def total_loss(c, values, raw, num_frames, labels, alpha=0.5):
  """The original train.py's loss: CrossEntropyLoss (epsilon 1e-5) + moe_l2 * 0.5 * sum(w^2)
  over the MoE gate and expert weights, in training mode; and the batch statistics."""
  p, stats = forward(c, values, raw, num_frames, training=True)
  y = np.asarray(labels, np.float64)
  cross_entropy = -2 * (alpha * y * np.log(p + LOSS_EPSILON)
                        + (1 - alpha) * (1 - y) * np.log(1 - p + LOSS_EPSILON))
  l2 = sum(np.sum(np.square(np.asarray(values[n], np.float64))) for n in values
           if n in ("gates/weights", "gates1/weights", "gates2/weights", "experts/weights"))
  return cross_entropy.sum(axis=1).mean() + c.moe_l2 * 0.5 * l2, stats


def numeric_gradients(c, values, raw, num_frames, labels, step=1e-6):
  """Central finite differences of total_loss in float64 for every trainable variable."""
  values = {n: np.asarray(v, np.float64) for n, v in values.items()}
  gradients = {}
  for name in sorted(values):
    if is_statistic(name):
      continue
    value = values[name]
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
      saved = value[index]
      value[index] = saved + step
      plus, _ = total_loss(c, values, raw, num_frames, labels)
      value[index] = saved - step
      minus, _ = total_loss(c, values, raw, num_frames, labels)
      value[index] = saved
      grad[index] = (plus - minus) / (2 * step)
    gradients[name] = grad
  return gradients


def expected_sgd_step(c, values, raw, num_frames, labels, learning_rate, clip_norm=1.0):
  """The values after one step of the original train.py with plain SGD: each gradient tensor
  clipped to clip_norm on its own, then w -= lr * g; batch-norm statistics
  m <- 0.999 m + 0.001 batch."""
  gradients = numeric_gradients(c, values, raw, num_frames, labels)
  _, stats = total_loss(c, values, raw, num_frames, labels)
  updated, clipped = {}, set()
  for name, grad in gradients.items():
    norm = np.sqrt(np.sum(grad * grad))
    if norm > clip_norm:
      grad, _ = grad * clip_norm / norm, clipped.add(name)
    updated[name] = np.asarray(values[name], np.float64) - learning_rate * grad
  for scope, (mean, variance) in stats.items():
    for part, batch in (("moving_mean", mean), ("moving_variance", variance)):
      old = np.asarray(values["%s/%s" % (scope, part)], np.float64)
      updated["%s/%s" % (scope, part)] = BN_DECAY * old + (1 - BN_DECAY) * batch
  return updated, gradients, clipped
