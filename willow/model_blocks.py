"""Building blocks shared by every WILLOW model, each written once.

All blocks are `tf.Module`s whose variables are created eagerly in the constructor (every
shape is known from the configuration), so a model is complete as soon as it is built and
its checkpoint layout never depends on a first call. Initializers, batch-norm constants and
the flattening orders are the original's, so weights trained by the original TF1 code give
the same predictions here (the original's frame_level_models.py and video_level_models.py,
whose TF1 defaults differ from Keras': batch-norm momentum 0.999, l2 factor 1/2, GRU and
LSTM gate layouts; docs/architecture.md).
"""
import contextlib
import math
from typing import List, Optional

import tensorflow as tf

# TF1 slim batch norm: moving averages decay by 0.999 (Keras' default is 0.99), epsilon 1e-3.
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3
# tf.nn.l2_normalize divides by sqrt(max(sum(x^2), epsilon)).
L2N_EPSILON = 1e-12


def l2n(x, axis=-1):
  """tf.math.l2_normalize's value (x / sqrt(max(sum x^2, epsilon)) along axis) with its
  gradient in one expression, dx = (dy - y <dy, y>) / norm (the clamp's branch: dy / norm),
  instead of the chain of square, sum, maximum, rsqrt and product gradients (a pass over the
  tensor each: the pooled descriptors are 80 x 262144 floats at the README's sizes)."""

  @tf.custom_gradient
  def normalize(x):
    square_sum = tf.reduce_sum(tf.square(x), axis, keepdims=True)
    inverse_norm = tf.math.rsqrt(tf.maximum(square_sum, tf.cast(L2N_EPSILON, x.dtype)))
    y = x * inverse_norm

    def gradient(dy):
      # tf.maximum passes the gradient to the sum where sum >= epsilon (its tie rule).
      projection = tf.reduce_sum(dy * y, axis, keepdims=True)
      projection *= tf.cast(square_sum >= L2N_EPSILON, x.dtype)
      return (dy - y * projection) * inverse_norm

    return y, gradient

  return normalize(x)


def dense(x, weights):
  """x W for a batch of a few rows x against a large weight matrix W.

  The gradient's input term dx = dy W^T is computed as (W dy^T)^T: TensorFlow's CPU kernel
  for a product with a transposed large right operand runs 2-3x below its rate for the same
  product with W on the left (BENCHMARKS.md, training speed); the transpose back is of the
  small [rows, inputs] result."""

  @tf.custom_gradient
  def product(x, weights):

    def gradient(dy):
      dx = tf.transpose(tf.matmul(weights, dy, transpose_b=True))
      return dx, tf.matmul(x, dy, transpose_a=True)

    return tf.matmul(x, weights), gradient

  return product(x, tf.convert_to_tensor(weights))


class _NewVariables:
  """How new variables are created: in float32 and drawn from their initializers, except in
  models built for inference, which are created in the inference dtype (weights then need no
  cast on every batch) and as zeros, because a restore overwrites every one of them (random
  draws of a 333M-parameter model in float64 would cost seconds and leave GBs of temporaries
  in the allocator's pool)."""
  dtype = tf.float32
  to_be_restored = False


@contextlib.contextmanager
def variables_for_restore(dtype):
  """Blocks built inside create zero variables in dtype, for a restore to fill."""
  previous = (_NewVariables.dtype, _NewVariables.to_be_restored)
  _NewVariables.dtype, _NewVariables.to_be_restored = tf.as_dtype(dtype), True
  try:
    yield
  finally:
    _NewVariables.dtype, _NewVariables.to_be_restored = previous


def _new_variable(shape, draw, name, **kwargs):
  if _NewVariables.to_be_restored:
    values = tf.zeros(shape, _NewVariables.dtype)
  else:
    values = draw(_NewVariables.dtype)
  return tf.Variable(values, name=name, **kwargs)


def normal(shape, stddev, mean=0.0, name=None, trainable=True):
  """A variable drawn from the plain (untruncated) normal the original used everywhere."""
  return _new_variable(
      shape, lambda dtype: tf.random.normal(shape, mean=mean, stddev=stddev, dtype=dtype),
      name, trainable=trainable)


def glorot_uniform(shape, name=None):
  """TF1's default get_variable initializer (and slim's fully_connected weights)."""
  fan_in, fan_out = shape[-2], shape[-1]
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return _new_variable(
      shape, lambda dtype: tf.random.uniform(shape, -limit, limit, dtype=dtype), name)


def like(variable, x):
  """The variable in x's dtype: weights are stored in float32 (float64 in models built for
  float64 inference) and used in the compute dtype of the input (bfloat16 for mixed
  precision); the cast is free when the two agree."""
  return tf.cast(variable, x.dtype)


def constant(shape, value, name=None, trainable=True, **kwargs):
  return _new_variable(shape, lambda dtype: tf.fill(shape, tf.constant(value, dtype)), name,
                       trainable=trainable, **kwargs)


# ----------------------------------------------------------------------------------------
# Batch normalization with slim semantics and precise-BN calibration.

class _BatchStatRecorder:
  """While active, batch-norm layers in training mode record their batch statistics
  instead of updating their moving averages (used to re-estimate population statistics)."""
  active: Optional[List] = None


@contextlib.contextmanager
def recording_batch_statistics():
  """Yields a list that receives (layer, batch_mean, batch_variance) for every batch-norm
  layer run in training mode inside the block; moving averages stay untouched."""
  records = []
  previous, _BatchStatRecorder.active = _BatchStatRecorder.active, records
  try:
    yield records
  finally:
    _BatchStatRecorder.active = previous


class BatchNorm(tf.Module):
  """Batch norm over axis 0 of a 2-D tensor, as slim.batch_norm(center, scale) in TF1.

  Training normalizes with the batch mean and biased batch variance and moves the moving
  statistics by 0.001 of the way; inference uses the moving statistics. The moving statistics
  are ON_READ variables so each replica updates its own copy and reads average them.
  """

  def __init__(self, channels: int, name: str):
    super().__init__(name=name)
    with self.name_scope:
      self.beta = constant([channels], 0.0, name="beta")
      self.gamma = constant([channels], 1.0, name="gamma")
      stat = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                  aggregation=tf.VariableAggregation.MEAN)
      self.moving_mean = constant([channels], 0.0, name="moving_mean", **stat)
      self.moving_variance = constant([channels], 1.0, name="moving_variance", **stat)

  def __call__(self, x, training: bool):
    if not training:
      mean, variance = like(self.moving_mean, x), like(self.moving_variance, x)
    elif x.dtype in (tf.float32, tf.bfloat16):
      y, mean, variance = fused_batch_norm_training(x, self.gamma, self.beta)
      self._record_or_update(mean, variance)
      return y
    else:
      mean, variance = tf.nn.moments(x, axes=[0])
      self._record_or_update(mean, variance)
    return tf.nn.batch_normalization(x, like(mean, x), like(variance, x), like(self.beta, x),
                                     like(self.gamma, x), BN_EPSILON)

  def standardize(self, x, training: bool):
    """(x - mean) / sqrt(variance + epsilon), by the batch statistics (recorded or moved
    into the averages as __call__ does) or the moving ones: the norm without its scale and
    offset, which AffineFrames applies inside the products that use the frames."""
    if not training:
      inverse = tf.math.rsqrt(like(self.moving_variance, x) + BN_EPSILON)
      return (x - like(self.moving_mean, x)) * inverse
    if x.dtype in (tf.float32, tf.bfloat16):
      ones = tf.ones(self.gamma.shape, tf.float32)
      x_hat, mean, variance = fused_batch_norm_training(x, ones, tf.zeros_like(ones))
    else:
      mean, variance = tf.nn.moments(x, axes=[0])
      x_hat = tf.nn.batch_normalization(x, mean, variance, None, None, BN_EPSILON)
    self._record_or_update(mean, variance)
    return x_hat

  def _record_or_update(self, mean, variance):
    if _BatchStatRecorder.active is not None:
      _BatchStatRecorder.active.append((self, mean, variance))
    else:
      self._update_moving(self.moving_mean, mean)
      self._update_moving(self.moving_variance, variance)

  @staticmethod
  def _update_moving(moving, batch_value):
    moving.assign_sub((moving - tf.cast(batch_value, moving.dtype)) * (1.0 - BN_MOMENTUM))


def fused_batch_norm_training(x, gamma, beta):
  """Training-mode batch norm of a 2-D x in one kernel each way (FusedBatchNormV3, which
  slim.batch_norm used too), instead of moments and normalization as separate element-wise
  passes. Returns (y, batch mean, biased batch variance); statistics in float32 (for bfloat16
  x too: 16-bit sums over a batch lose too much)."""
  channels = gamma.shape[0]  # static even where x's last axis is not
  y, mean, corrected_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
      x=tf.reshape(x, [-1, 1, 1, channels]), scale=tf.cast(gamma, tf.float32),
      offset=tf.cast(beta, tf.float32), mean=tf.constant([], tf.float32),
      variance=tf.constant([], tf.float32), epsilon=BN_EPSILON, data_format="NHWC",
      is_training=True)
  # The kernel returns the variance with Bessel's correction n / (n - 1); ours normalizes
  # and moves the averages with the biased one, as it does (a single row has variance 0).
  rows = tf.cast(tf.shape(x)[0], tf.float32)
  variance = tf.where(rows > 1, corrected_variance * ((rows - 1) / tf.maximum(rows, 1)), 0.0)
  return tf.reshape(y, tf.shape(x)), mean, variance


class Bias(tf.Module):
  """The additive bias the original used where batch norm is switched off."""

  def __init__(self, channels: int, stddev: float, name: str):
    super().__init__(name=name)
    with self.name_scope:
      self.bias = normal([channels], stddev, name="bias")

  def __call__(self, x, training: bool = False):
    del training
    return x + like(self.bias, x)


def batch_norm_or_bias(channels: int, add_batch_norm: bool, bias_stddev: float, name: str):
  """Batch norm, or (the original's broken no-BN branches, fixed) a bias of that width."""
  if add_batch_norm:
    return BatchNorm(channels, name=name)
  return Bias(channels, bias_stddev, name=name.replace("_bn", "_biases"))


# ----------------------------------------------------------------------------------------
# Cluster soft-assignment and the pooling layers built on it.

class AffineFrames:
  """Frames y = x * scale + offset (per feature), [B, n, F], held as x, scale and offset.

  The input batch norm of the cluster models hands its output on in this form, and the
  pooling layers consume frames only through products, which absorb the map:
  y W = x (scale W) + offset W and y^T A = scale (x^T A) + offset (1^T A). x is the frames
  standardized by statistics of the data alone, so backprop never forms the gradient of the
  [B, n, F] frames, which only the norm's scale and offset would use: per branch the
  [Bn, K] x [K, F] product of the soft assignment, one or two [n, K] x [K, F] products per
  video from the aggregation, their sum and the norm's backward pass over every frame (the
  original computed all of them). scale and offset get their gradients from [F, K] terms.
  Plain [B, n, F] tensors (no input batch norm) are wrapped with scale 1 and offset 0.
  """

  def __init__(self, values, scale=None, offset=None):
    self.values, self.scale, self.offset = values, scale, offset

  @classmethod
  def of(cls, frames):
    return frames if isinstance(frames, cls) else cls(frames)

  @property
  def dtype(self):
    return self.values.dtype

  def split(self, sizes):
    """One AffineFrames per feature block of the last axis."""
    values = tf.split(self.values, sizes, axis=2)
    if self.scale is None:
      return [AffineFrames(v) for v in values]
    return [AffineFrames(v, scale, offset) for v, scale, offset
            in zip(values, tf.split(self.scale, sizes), tf.split(self.offset, sizes))]

  def project(self, weights):
    """Every frame times weights [F, K]: [B n, K]."""
    shape = tf.shape(self.values)
    flat = tf.reshape(self.values, [shape[0] * shape[1], shape[2]])
    weights = like(weights, self.values)
    if self.scale is None:
      return tf.matmul(flat, weights)
    scale, offset = like(self.scale, self.values), like(self.offset, self.values)
    return tf.nn.bias_add(tf.matmul(flat, scale[:, None] * weights),
                          tf.linalg.matvec(weights, offset, transpose_a=True))

  def weighted_sums(self, assignments, second_order: bool = False):
    """sum_t A[t, k] y[t, f] -> [B, F, K] (the first-order statistic of VLAD and FV); with
    second_order also sum_t A[t, k] y[t, f]^2, from
    y^2 = scale^2 x^2 + 2 scale offset x + offset^2."""
    x_a = tf.matmul(self.values, assignments, transpose_a=True)
    x2_a = (tf.matmul(tf.square(self.values), assignments, transpose_a=True)
            if second_order else None)
    if self.scale is not None:
      scale, offset = like(self.scale, self.values), like(self.offset, self.values)
      mass = tf.reduce_sum(assignments, axis=1, keepdims=True)  # [B, 1, K]
      if second_order:
        x2_a = feature_weighted_sum([x2_a, x_a, mass],
                                    [tf.square(scale), 2 * scale * offset, tf.square(offset)])
      x_a = feature_weighted_sum([x_a, mass], [scale, offset])
    return (x_a, x2_a) if second_order else x_a


def feature_weighted_sum(terms, weights):
  """sum_i w_i[f] T_i[b, f, k] for weights [F] and terms [B, F, K] or [B, 1, K].

  The weights' gradients sum over b and k in two passes that each reduce contiguous memory
  (over k, then over b): TensorFlow's gradient of a broadcast product reduces axes 0 and 2
  in one pass, 5-10x slower at [80, 1024, 256]."""

  @tf.custom_gradient
  def weighted_sum(*args):
    terms, weights = args[:len(args) // 2], args[len(args) // 2:]
    columns = [w[:, None] for w in weights]

    def gradient(dy):
      term_gradients, weight_gradients = [], []
      for term, column in zip(terms, columns):
        if term.shape[1] == 1:  # [B, 1, K], broadcast over f
          term_gradients.append(tf.reduce_sum(dy * column, axis=1, keepdims=True))
          weight_gradients.append(tf.reduce_sum(tf.matmul(dy, term, transpose_b=True),
                                                axis=0)[:, 0])
        else:
          term_gradients.append(dy * column)
          weight_gradients.append(tf.reduce_sum(tf.reduce_sum(dy * term, axis=2), axis=0))
      return term_gradients + weight_gradients

    return tf.add_n([column * term for term, column in zip(terms, columns)]), gradient

  return weighted_sum(*terms, *weights)


class ClusterAssignment(tf.Module):
  """Soft assignment of each frame to K clusters: softmax_K(BN(X W_c)).

  With `softmax=False` it returns the normalized logits (the DBoF family's activation).
  """

  def __init__(self, feature_size: int, cluster_size: int, add_batch_norm: bool = True,
               softmax: bool = True, name: str = "cluster_assignment"):
    super().__init__(name=name)
    self.softmax = softmax
    with self.name_scope:
      self.cluster_weights = normal([feature_size, cluster_size], 1 / math.sqrt(feature_size),
                                    name="cluster_weights")
      self.norm = batch_norm_or_bias(cluster_size, add_batch_norm,
                                     1 / math.sqrt(feature_size), name="cluster_bn")

  def __call__(self, frames, training: bool):
    """frames [B, n, F] (a tensor or AffineFrames) -> assignments [B, n, K]."""
    frames = AffineFrames.of(frames)
    shape = tf.shape(frames.values)
    logits = self.norm(frames.project(self.cluster_weights), training)
    if self.softmax:
      logits = tf.nn.softmax(logits)
    return tf.reshape(logits, [shape[0], shape[1], -1])


def weighted_frame_sum(frames, assignments):
  """sum_t A[t, k] x[t, f] -> [B, F, K] (the first-order statistic of VLAD and FV)."""
  return AffineFrames.of(frames).weighted_sums(assignments)


def flatten_normalized(descriptor, intra_normalize: bool):
  """[B, F, K] -> [B, F*K], F-major (flat index f*K + k) as the original; l2-normalized,
  optionally after normalizing each cluster's residual over f (intra-normalization)."""
  if intra_normalize:
    descriptor = l2n(descriptor, axis=1)
  flat = tf.reshape(descriptor, [tf.shape(descriptor)[0], -1])
  return l2n(flat)


class NetVLAD(tf.Module):
  """NetVLAD, NetRVLAD (`variant="rvlad"`, the original's LightVLAD: no centres) and
  NetVLAGD (`variant="vlagd"`: a static sigmoid gate per (cluster, feature))."""

  def __init__(self, feature_size: int, cluster_size: int, add_batch_norm: bool,
               variant: str = "vlad", name: str = "vlad"):
    super().__init__(name=name)
    if variant not in ("vlad", "rvlad", "vlagd"):
      raise ValueError("unknown NetVLAD variant %r" % variant)
    self.variant = variant
    self.output_size = feature_size * cluster_size
    stddev = 1 / math.sqrt(feature_size)
    with self.name_scope:
      self.assignment = ClusterAssignment(feature_size, cluster_size, add_batch_norm)
      if variant == "vlad":
        self.centres = normal([1, feature_size, cluster_size], stddev, name="cluster_weights2")
      elif variant == "vlagd":
        self.gate_weights = normal([1, cluster_size, feature_size], stddev, name="gate_weights")

  def __call__(self, frames, training: bool):
    assignments = self.assignment(frames, training)
    vlad = weighted_frame_sum(frames, assignments)  # [B, F, K]
    if self.variant == "vlad":
      mass = tf.reduce_sum(assignments, axis=1, keepdims=True)  # [B, 1, K]
      vlad -= mass * like(self.centres, vlad)
    elif self.variant == "vlagd":
      vlad *= tf.transpose(tf.sigmoid(like(self.gate_weights, vlad)), [0, 2, 1])
    return flatten_normalized(vlad, intra_normalize=True)


class NetFV(tf.Module):
  """NetFV: first- and second-order Fisher-vector statistics, 2*F*K outputs.

  The asymmetric normalization is the original's, kept for weight compatibility: the first
  order is intra-normalized per cluster, the second order is not.
  """

  def __init__(self, feature_size: int, cluster_size: int, add_batch_norm: bool,
               couple_weights: bool, coupling_factor: float, name: str = "fv"):
    super().__init__(name=name)
    self.couple_weights = couple_weights
    self.coupling_factor = coupling_factor
    self.output_size = 2 * feature_size * cluster_size
    stddev = 1 / math.sqrt(feature_size)
    with self.name_scope:
      self.assignment = ClusterAssignment(feature_size, cluster_size, add_batch_norm)
      self.covar_weights = normal([feature_size, cluster_size], stddev, mean=1.0,
                                  name="covar_weights")
      if not couple_weights:
        self.centres = normal([1, feature_size, cluster_size], stddev, name="cluster_weights2")

  def __call__(self, frames, training: bool):
    assignments = self.assignment(frames, training)
    if self.couple_weights:
      centres = self.coupling_factor * like(self.assignment.cluster_weights, frames)[None]
    else:
      centres = like(self.centres, frames)
    sigma = tf.square(like(self.covar_weights, frames)) + 1e-6  # acts as a standard deviation
    mass = tf.reduce_sum(assignments, axis=1, keepdims=True)  # [B, 1, K]
    first, second = AffineFrames.of(frames).weighted_sums(assignments, second_order=True)
    fv1 = (first - mass * centres) / sigma
    fv2 = (second - 2 * centres * first + mass * tf.square(centres)) / tf.square(sigma) - mass
    return tf.concat([flatten_normalized(fv1, intra_normalize=True),
                      flatten_normalized(fv2, intra_normalize=False)], axis=1)


class SoftDBoF(tf.Module):
  """Soft bag of words: l2-normalized sum of assignments (+ l2-normalized max if maxpool)."""

  def __init__(self, feature_size: int, cluster_size: int, add_batch_norm: bool,
               max_pool: bool, name: str = "soft_dbof"):
    super().__init__(name=name)
    self.max_pool = max_pool
    self.output_size = cluster_size * (2 if max_pool else 1)
    with self.name_scope:
      self.assignment = ClusterAssignment(feature_size, cluster_size, add_batch_norm)

  def __call__(self, frames, training: bool):
    assignments = self.assignment(frames, training)
    pooled = l2n(tf.reduce_sum(assignments, axis=1))
    if self.max_pool:
      pooled = tf.concat([pooled, l2n(tf.reduce_max(assignments, axis=1))], axis=1)
    return pooled


class GatedDBoF(tf.Module):
  """Gated soft bag of words: the assignment sum gated by a function of the max-pooled
  assignments, g = sigmoid(BN(max A R W2)), output l2n(g * sum A)."""

  def __init__(self, feature_size: int, cluster_size: int, add_batch_norm: bool,
               name: str = "gated_dbof"):
    super().__init__(name=name)
    self.output_size = cluster_size
    stddev = 1 / math.sqrt(feature_size)
    with self.name_scope:
      self.assignment = ClusterAssignment(feature_size, cluster_size, add_batch_norm)
      self.dim_red = normal([cluster_size, feature_size], stddev, name="dim_red")
      self.gate_weights = normal([feature_size, cluster_size], stddev, name="cluster_weights_2")
      self.gate_norm = batch_norm_or_bias(cluster_size, add_batch_norm, stddev,
                                          name="cluster_bn_2")

  def __call__(self, frames, training: bool):
    assignments = self.assignment(frames, training)
    summed = tf.reduce_sum(assignments, axis=1)
    maxed = l2n(tf.reduce_max(assignments, axis=1))
    reduced = maxed @ like(self.dim_red, maxed)
    gates = tf.sigmoid(self.gate_norm(reduced @ like(self.gate_weights, maxed), training))
    return l2n(gates * summed)


DBOF_ACTIVATIONS = ("relu", "glu", "none")


class DBoF(tf.Module):
  """Deep bag of frames of DbofModelLF: activated (not softmaxed) cluster logits, then
  [l2n(mean_t), l2n(max_t)]. The activation is applied as its flag says (the original
  compared a tensor with the flag string and so never applied it); "glu" computes 2K logits
  and gates the first K with the sigmoid of the second K."""

  def __init__(self, feature_size: int, cluster_size: int, add_batch_norm: bool,
               activation: str = "relu", name: str = "dbof"):
    super().__init__(name=name)
    if activation not in DBOF_ACTIVATIONS:
      raise ValueError("--dbof_activation must be one of %s, got %r"
                       % (", ".join(DBOF_ACTIVATIONS), activation))
    self.activation = activation
    self.output_size = 2 * cluster_size
    logits = 2 * cluster_size if activation == "glu" else cluster_size
    with self.name_scope:
      self.assignment = ClusterAssignment(feature_size, logits, add_batch_norm, softmax=False)

  def __call__(self, frames, training: bool):
    activations = self.assignment(frames, training)
    if self.activation == "relu":
      activations = tf.nn.relu6(activations)
    elif self.activation == "glu":
      values, gates = tf.split(activations, 2, axis=2)
      activations = values * tf.sigmoid(gates)
    return tf.concat([l2n(tf.reduce_mean(activations, axis=1)),
                      l2n(tf.reduce_max(activations, axis=1))], axis=1)


# ----------------------------------------------------------------------------------------
# Hidden layer, context gating and the classifier heads.

class HiddenLayer(tf.Module):
  """The dense layer between pooling and classifier.

  With batch norm and relu: relu6(BN(x W)). Otherwise x W + b, then relu6 if `relu`.
  W is drawn from N(1/sqrt(K)) with K the (first branch's) cluster count, not the fan-in:
  the original's quirk, kept so that initial activations match.
  """

  def __init__(self, input_size: int, hidden_size: int, init_stddev: float,
               add_batch_norm: bool, relu: bool, name: str = "hidden"):
    super().__init__(name=name)
    self.relu = relu
    self.output_size = hidden_size
    with self.name_scope:
      self.weights = normal([input_size, hidden_size], init_stddev, name="hidden1_weights")
      self.norm = batch_norm_or_bias(hidden_size, add_batch_norm and relu, 0.01,
                                     name="hidden1_bn")

  def __call__(self, x, training: bool):
    h = self.norm(dense(x, like(self.weights, x)), training)
    return tf.nn.relu6(h) if self.relu else h


class ContextGate(tf.Module):
  """Context gating: x * sigmoid(BN(x G)), optionally without the self (diagonal) term."""

  def __init__(self, size: int, add_batch_norm: bool = True, remove_diag: bool = False,
               name: str = "context_gate", weights_name: str = "gating_weights_2",
               norm_name: str = "gating_bn", input_size: Optional[int] = None):
    super().__init__(name=name)
    self.remove_diag = remove_diag
    input_size = input_size or size
    with self.name_scope:
      self.weights = normal([input_size, size], 1 / math.sqrt(size), name=weights_name)
      self.norm = batch_norm_or_bias(size, add_batch_norm, 1 / math.sqrt(size), name=norm_name)

  def __call__(self, x, training: bool, gate_input=None):
    """Gates x by a function of gate_input (default x itself)."""
    source = x if gate_input is None else gate_input
    weights = like(self.weights, source)
    z = dense(source, weights)
    if self.remove_diag:
      z -= tf.linalg.diag_part(weights) * source
    return x * tf.sigmoid(self.norm(z, training))


class MoeHead(tf.Module):
  """Mixture of experts over V classes with M sigmoid experts plus an implicit zero expert.

  The flat gate/expert layouts are class-major (gate column c*(M+1)+m, expert column c*M+m)
  as in the original. With `prob_gating` the class probabilities are context-gated
  (from the probabilities, or from the head's input when prob_gating_input != "prob").
  """

  def __init__(self, input_size: int, vocab_size: int, num_mixtures: int = 2,
               l2_penalty: float = 1e-8, low_rank_gating: int = -1,
               prob_gating: bool = False, prob_gating_input: str = "prob",
               remove_diag: bool = False, name: str = "moe"):
    super().__init__(name=name)
    self.vocab_size = vocab_size
    self.num_mixtures = num_mixtures
    self.l2_penalty = l2_penalty
    self.gate_from_probabilities = prob_gating_input == "prob"
    gate_width = vocab_size * (num_mixtures + 1)
    with self.name_scope:
      if low_rank_gating == -1:
        self.gate_weights = [glorot_uniform([input_size, gate_width], name="gates")]
      else:
        self.gate_weights = [glorot_uniform([input_size, low_rank_gating], name="gates1"),
                             glorot_uniform([low_rank_gating, gate_width], name="gates2")]
      self.expert_weights = glorot_uniform([input_size, vocab_size * num_mixtures],
                                           name="experts")
      self.expert_biases = constant([vocab_size * num_mixtures], 0.0, name="experts_biases")
      self.prob_gate = None
      if prob_gating:
        if remove_diag and not self.gate_from_probabilities:
          raise ValueError("--gating_remove_diag needs --moe_prob_gating_input=prob")
        self.prob_gate = ContextGate(
            vocab_size, add_batch_norm=True, remove_diag=remove_diag, name="prob_gate",
            weights_name="gating_prob_weights", norm_name="gating_prob_bn",
            input_size=vocab_size if self.gate_from_probabilities else input_size)

  def __call__(self, x, training: bool):
    gate_logits = x
    for weights in self.gate_weights:
      gate_logits = dense(gate_logits, like(weights, x))
    expert_logits = dense(x, like(self.expert_weights, x)) + like(self.expert_biases, x)
    gates = tf.nn.softmax(tf.reshape(gate_logits, [-1, self.num_mixtures + 1]))
    experts = tf.sigmoid(tf.reshape(expert_logits, [-1, self.num_mixtures]))
    probabilities = tf.reduce_sum(gates[:, :self.num_mixtures] * experts, axis=1)
    probabilities = tf.reshape(probabilities, [-1, self.vocab_size])
    if self.prob_gate is not None:
      gate_input = None if self.gate_from_probabilities else x
      probabilities = self.prob_gate(probabilities, training, gate_input=gate_input)
    return {"predictions": probabilities}

  def regularization_loss(self):
    # slim's l2_regularizer(scale) adds scale * sum(w^2) / 2 (tf.nn.l2_loss).
    weights = self.gate_weights + [self.expert_weights]
    return self.l2_penalty * tf.add_n([tf.nn.l2_loss(w) for w in weights])


class LogisticHead(tf.Module):
  """sigmoid(x W + b) with slim's l2 penalty on W (the starter code's LogisticModel)."""

  def __init__(self, input_size: int, vocab_size: int, l2_penalty: float = 1e-8,
               name: str = "logistic"):
    super().__init__(name=name)
    self.l2_penalty = l2_penalty
    with self.name_scope:
      self.weights = glorot_uniform([input_size, vocab_size], name="weights")
      self.biases = constant([vocab_size], 0.0, name="biases")

  def __call__(self, x, training: bool):
    del training
    logits = dense(x, like(self.weights, x)) + like(self.biases, x)
    return {"predictions": tf.sigmoid(logits)}

  def regularization_loss(self):
    return self.l2_penalty * tf.nn.l2_loss(self.weights)


# ----------------------------------------------------------------------------------------
# Recurrent cells with the TF1 equations and kernel layouts.

class LSTMLayer(tf.Module):
  """TF1 BasicLSTMCell unrolled over time: [i, j, f, o] = [x, h] W + b,
  c' = c sigmoid(f + 1) + sigmoid(i) tanh(j), h' = tanh(c') sigmoid(o).

  The forget bias 1.0 is added at run time (not stored), as TF1 did. The input projection of
  all time steps is one matmul; only h W_h stays in the loop.
  """

  def __init__(self, input_size: int, units: int, name: str = "lstm"):
    super().__init__(name=name)
    self.input_size, self.units = input_size, units
    with self.name_scope:
      self.kernel = glorot_uniform([input_size + units, 4 * units], name="kernel")
      self.bias = constant([4 * units], 0.0, name="bias")

  def initial_state(self, batch, dtype):
    zeros = tf.zeros([batch, self.units], dtype)
    return (zeros, zeros)

  def project_inputs(self, inputs):
    kernel = like(self.kernel, inputs)
    return tf.einsum("btd,dg->btg", inputs, kernel[:self.input_size]) + like(self.bias, inputs)

  def recurrent_weights(self, inputs):
    return like(self.kernel, inputs)[self.input_size:]

  def step(self, projected, state, recurrent_kernel):
    c, h = state
    recurrent = tf.matmul(h, recurrent_kernel)
    i, j, f, o = tf.split(projected + recurrent, 4, axis=1)
    c = c * tf.sigmoid(f + 1.0) + tf.sigmoid(i) * tf.tanh(j)
    h = tf.tanh(c) * tf.sigmoid(o)
    return h, (c, h)


class GRULayer(tf.Module):
  """TF1 GRUCell unrolled over time: [r, u] = sigmoid([x, h] W_g + b_g) with b_g initialised
  to 1.0, c = tanh([x, r h] W_c + b_c), h' = u h + (1 - u) c (reset applied before the
  matmul: Keras' reset_after=False form)."""

  def __init__(self, input_size: int, units: int, name: str = "gru"):
    super().__init__(name=name)
    self.input_size, self.units = input_size, units
    with self.name_scope:
      self.gate_kernel = glorot_uniform([input_size + units, 2 * units], name="gates_kernel")
      self.gate_bias = constant([2 * units], 1.0, name="gates_bias")
      self.candidate_kernel = glorot_uniform([input_size + units, units],
                                             name="candidate_kernel")
      self.candidate_bias = constant([units], 0.0, name="candidate_bias")

  def initial_state(self, batch, dtype):
    return tf.zeros([batch, self.units], dtype)

  def project_inputs(self, inputs):
    d = self.input_size
    gate_kernel, candidate_kernel = like(self.gate_kernel, inputs), like(self.candidate_kernel,
                                                                          inputs)
    gates = tf.einsum("btd,dg->btg", inputs, gate_kernel[:d]) + like(self.gate_bias, inputs)
    candidate = (tf.einsum("btd,dg->btg", inputs, candidate_kernel[:d])
                 + like(self.candidate_bias, inputs))
    return tf.concat([gates, candidate], axis=2)

  def recurrent_weights(self, inputs):
    d = self.input_size
    return like(self.gate_kernel, inputs)[d:], like(self.candidate_kernel, inputs)[d:]

  def step(self, projected, h, recurrent_kernels):
    u = self.units
    gate_kernel, candidate_kernel = recurrent_kernels
    gate_in, candidate_in = projected[:, :2 * u], projected[:, 2 * u:]
    r, z = tf.split(tf.sigmoid(gate_in + tf.matmul(h, gate_kernel)), 2, axis=1)
    c = tf.tanh(candidate_in + tf.matmul(r * h, candidate_kernel))
    h = z * h + (1 - z) * c
    return h, h


def run_stacked_rnn(layers, inputs, sequence_length):
  """Runs stacked layers over time with TF1 dynamic_rnn semantics: each row's state stops
  changing after sequence_length steps. Returns the final state of every layer."""
  batch = tf.shape(inputs)[0]
  # A static length (frames are padded to a fixed count) lets XLA compile the loop; steps
  # past each sequence's end are masked below.
  time = inputs.shape[1] if inputs.shape[1] is not None else tf.shape(inputs)[1]
  outputs = inputs
  final_states = []
  for layer in layers:
    projected = tf.transpose(layer.project_inputs(outputs), [1, 0, 2])  # time-major
    state = layer.initial_state(batch, inputs.dtype)
    emitted = tf.TensorArray(inputs.dtype, size=time)
    # Read once, outside the loop: a weight read inside it is a per-step intermediate that
    # backprop keeps for every step (300 copies of a 17 MB matrix per layer for the README GRU).
    weights = layer.recurrent_weights(inputs)

    def body(t, state, emitted, layer=layer, projected=projected, weights=weights):
      output, new_state = layer.step(projected[t], state, weights)
      alive = (t < sequence_length)[:, None]
      new_state = tf.nest.map_structure(lambda n, o: tf.where(alive, n, o), new_state, state)
      return t + 1, new_state, emitted.write(t, tf.where(alive, output, tf.zeros_like(output)))

    _, state, emitted = tf.while_loop(lambda t, *_: t < time, body, (0, state, emitted),
                                      maximum_iterations=time)
    outputs = tf.transpose(emitted.stack(), [1, 0, 2])
    final_states.append(state)
  return final_states
