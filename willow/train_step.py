"""The training step: loss, gradients, clipping and the optimizer's update, all-reduced
across replicas.

Faithful to the original step (the original's train.py, build_graph): total = penalty * l2 +
label loss; each gradient tensor clipped to --clip_gradient_norm on its own (not a global
norm); staircase decay counted in examples; TF1 optimizer constants (Adam epsilon 1e-8).
willow/training.py runs the loop around it.
"""
import keras
import tensorflow as tf
from absl import logging

import losses
import utils
from willow import models


class ExampleStaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
  """lr = base * decay ^ floor(step * global_batch / decay_examples): the original's
  tf.train.exponential_decay(staircase=True) over the examples seen."""

  def __init__(self, base: float, decay: float, decay_examples: float, global_batch: int):
    self.base, self.decay = base, decay
    self.decay_examples, self.global_batch = decay_examples, global_batch

  def __call__(self, step):
    examples = tf.cast(step, tf.float64) * self.global_batch
    exponent = tf.floor(examples / self.decay_examples)
    return tf.cast(self.base * tf.pow(tf.constant(self.decay, tf.float64), exponent), tf.float32)

  def get_config(self):
    return dict(base=self.base, decay=self.decay, decay_examples=self.decay_examples,
                global_batch=self.global_batch)


class FusedAdam(keras.optimizers.Adam):
  """Keras Adam whose update is tf.train.AdamOptimizer's own kernel, ResourceApplyAdam.

  The same equation as Keras's update (m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2),
  w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)) and the same slot variables (so
  the same checkpoints), in one pass over w, m, v and g instead of one per operation: the
  update of the 333M-parameter models is bandwidth-bound (BENCHMARKS.md).
  """

  def update_step(self, gradient, variable, learning_rate):
    if self.amsgrad:
      return super().update_step(gradient, variable, learning_rate)
    dtype = variable.dtype
    index = self._get_variable_index(variable)
    local_step = tf.cast(self.iterations + 1, dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=self._momentums[index].handle,
        v=self._velocities[index].handle,
        beta1_power=tf.pow(tf.cast(self.beta_1, dtype), local_step),
        beta2_power=tf.pow(tf.cast(self.beta_2, dtype), local_step),
        lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype),
        beta2=tf.cast(self.beta_2, dtype), epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(gradient, dtype))


def clip_by_norm(gradient, clip_norm: float):
  """tf.clip_by_norm (g c / max(|g|, c)) in fewer passes over a large gradient: L2Loss sums
  the squares without storing them, and a tensor within the norm is returned as it is
  (tf.clip_by_norm would multiply it by c / c) instead of being rewritten."""
  norm = tf.sqrt(2.0 * tf.nn.l2_loss(gradient))
  return tf.cond(norm > clip_norm, lambda: gradient * (clip_norm / norm), lambda: gradient)


def clip_each_by_norm(gradients, clip_norm: float):
  """Each gradient tensor clipped to clip_norm on its own, once every gradient exists.

  Clipped as soon as its own gradient is ready, the copy of a large one (1.1 GB for the
  README NetVLAD's hidden layer) would be made while the rest of the backward pass still
  holds its activations: ~1 GB more peak memory."""
  with tf.control_dependencies(gradients):
    return [clip_by_norm(g, clip_norm) for g in gradients]


# The original built tf.train.<name>(learning_rate); these are the TF1 defaults of each.
_OPTIMIZERS = {
    "AdamOptimizer": lambda lr: FusedAdam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8),
    "GradientDescentOptimizer": lambda lr: keras.optimizers.SGD(lr),
    "MomentumOptimizer": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "AdagradOptimizer": lambda lr: keras.optimizers.Adagrad(
        lr, initial_accumulator_value=0.1, epsilon=1e-7),
    "AdadeltaOptimizer": lambda lr: keras.optimizers.Adadelta(lr, rho=0.95, epsilon=1e-8),
    "RMSPropOptimizer": lambda lr: keras.optimizers.RMSprop(lr, rho=0.9, epsilon=1e-10),
    "FtrlOptimizer": lambda lr: keras.optimizers.Ftrl(lr),
}
_KERAS_NAMES = {"Adam": "AdamOptimizer", "SGD": "GradientDescentOptimizer",
                "Adagrad": "AdagradOptimizer", "Adadelta": "AdadeltaOptimizer",
                "RMSprop": "RMSPropOptimizer", "Ftrl": "FtrlOptimizer"}


OPTIMIZER_NAMES = sorted(list(_OPTIMIZERS) + list(_KERAS_NAMES))


def make_optimizer(name: str, learning_rate):
  name = _KERAS_NAMES.get(name, name)
  if name not in _OPTIMIZERS:
    raise utils.InputError("unknown --optimizer %r; valid: %s" % (
        name, ", ".join(OPTIMIZER_NAMES)))
  return _OPTIMIZERS[name](learning_rate)


# --mixed_precision: the dtype the model computes in.
COMPUTE_DTYPES = {"none": tf.float32, "bf16": tf.bfloat16}


class TrainStep:
  """The model, its optimizer and the compiled step under a strategy.

  `options` is a training.TrainOptions; the step reads batch_size, base_learning_rate,
  learning_rate_decay, learning_rate_decay_examples, optimizer, clip_gradient_norm,
  regularization_penalty, label_loss, alpha, jit_compile, mixed_precision, seed,
  segment_labels and segment_size.
  """

  def __init__(self, config: models.ModelConfig, options, strategy: tf.distribute.Strategy):
    self.config, self.options, self.strategy = config, options, strategy
    self.replicas = strategy.num_replicas_in_sync
    self.global_batch = options.batch_size * self.replicas
    self.loss = losses.get_loss(options.label_loss, options.alpha)
    with strategy.scope():
      self.model = models.build_model(config)
      if options.segment_labels:
        self.model.segment_size = options.segment_size
      schedule = ExampleStaircaseDecay(
          base=options.base_learning_rate, decay=options.learning_rate_decay,
          decay_examples=options.learning_rate_decay_examples, global_batch=self.global_batch)
      self.optimizer = make_optimizer(options.optimizer, schedule)
      self.optimizer.build(self.model.trainable_variables)
    self._set_compute_dtype()
    self._compile()

  def _set_compute_dtype(self):
    """--mixed_precision=bf16 computes in bfloat16 (weights are cast at use, variables, the
    loss, gradients and batch-norm statistics stay float32). fp16 would need loss scaling
    and brings nothing on CPUs: not offered."""
    if self.options.mixed_precision not in COMPUTE_DTYPES:
      raise utils.InputError("--mixed_precision must be one of %s, got %r" % (
          ", ".join(COMPUTE_DTYPES), self.options.mixed_precision))
    self.model.compute_dtype = COMPUTE_DTYPES[self.options.mixed_precision]

  def _compile(self):
    """Compiles the forward and backward pass with XLA when --jit_compile asks for it (auto:
    where it pays, see xla_pays). XLA ignores the op seeds of the frame samplers, so a seeded
    run would not repeat, and it is not used across replicas. The clip and the optimizer's
    update stay outside XLA, where FusedAdam is one fused kernel a tensor, faster than XLA's
    compiled update (BENCHMARKS.md)."""
    mode = utils.jit_compile_mode(self.options.jit_compile)
    use_xla = mode == "true" or (mode == "auto" and self.xla_pays())
    if use_xla:
      self._loss_and_gradients = tf.function(self._loss_and_gradients.python_function,
                                             jit_compile=True, autograph=False)
    logging.info("forward and backward pass %s XLA (--jit_compile=%s)",
                 "with" if use_xla else "without", mode)

  def xla_pays(self, cpu_flags=None) -> bool:
    """--jit_compile=auto: XLA on one replica without --seed, except on a CPU where
    TensorFlow's oneDNN kernels run the step faster (BENCHMARKS.md, training speed): in
    bfloat16 (XLA's CPU products do not use the AVX512-BF16 / AMX units that oneDNN's do), and
    for a hidden layer of LONG_CONTRACTION inputs or more on CPUs with AVX-512 (where XLA's
    product is no faster than oneDNN's or slower; on AVX2-only CPUs XLA wins)."""
    if self.replicas != 1 or self.options.seed is not None:
      return False
    if tf.config.list_logical_devices("GPU"):
      return True
    if self.model.compute_dtype == tf.bfloat16:
      return False
    cpu_flags = utils.cpu_flags() if cpu_flags is None else cpu_flags
    return not (utils.has_long_hidden_contraction(self.model) and "avx512f" in cpu_flags)

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  @tf.function(autograph=False)
  def _loss_and_gradients(self, video_matrix, num_frames, labels, divisor, label_weights=None):
    """Gradients of (sum of label losses + its share of the penalty) / divisor, with that sum
    of label losses and the predictions. label_weights: see losses.py."""
    variables = self.model.trainable_variables
    size = tf.cast(tf.shape(labels)[0], tf.float32)
    with tf.GradientTape() as tape:
      predictions = self.model(video_matrix, num_frames, training=True)["predictions"]
      label_sum = tf.cast(self.loss.calculate_loss(predictions, labels,
                                                   label_weights=label_weights),
                          tf.float32) * size
      total = label_sum + self.options.regularization_penalty * (
          self.model.regularization_loss() * size)
      objective = total / divisor
    gradients = tape.gradient(objective, variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [tf.convert_to_tensor(g) for g in gradients], label_sum, predictions

  def _replica_step(self, batch, requests):
    """One replica's share of a step; returns its outputs and the agreed requests.

    The gradient is that of the global batch's mean loss plus the penalty, however the
    examples are spread over replicas: each replica differentiates its sum of losses (plus
    its share of the penalty), the sums are added over all replicas and divided by the
    global number of examples (on one replica, the division is part of the differentiated
    loss). When a worker runs out of data before the others, tf.distribute feeds its replicas
    empty batches until every worker has: those contribute nothing (no forward pass, so no
    NaN batch statistics).
    """
    variables = self.model.trainable_variables
    penalty = self.options.regularization_penalty
    size = tf.cast(tf.shape(batch["labels"])[0], tf.float32)
    divisor = tf.maximum(size, 1.0) if self.replicas == 1 else tf.constant(1.0)

    def nothing():
      predictions = tf.zeros([0, self.config.num_classes], self.model.output_dtype)
      return [tf.zeros_like(v) for v in variables], tf.constant(0.0), predictions

    gradients, label_sum, predictions = tf.cond(
        size > 0, lambda: self._loss_and_gradients(batch["video_matrix"], batch["num_frames"],
                                                   batch["labels"], divisor,
                                                   batch.get("label_weights")), nothing)
    reg_loss = self.model.regularization_loss()
    if self.replicas > 1:
      # One all-reduce carries the gradients, the loss, the example count and the
      # save/stop requests of every worker (each replica's own copy of its worker's
      # requests: a tensor shared by the replicas would not be reduced).
      requests = tf.identity(requests)
      gradients, label_sum, size, requests = tf.distribute.get_replica_context().all_reduce(
          tf.distribute.ReduceOp.SUM, (gradients, label_sum, size, requests))
      gradients = [g / tf.maximum(size, 1.0) for g in gradients]
    size = tf.maximum(size, 1.0)
    # The clip applies to the gradient of the global batch, as on one device.
    if self.options.clip_gradient_norm > 0:
      gradients = clip_each_by_norm(gradients, self.options.clip_gradient_norm)
    if self.replicas > 1:
      # Keras sums gradients over replicas once more inside apply_gradients.
      gradients = [g / self.replicas for g in gradients]
    self.optimizer.apply_gradients(zip(gradients, variables))
    label_loss = label_sum / size
    outputs = dict(label_loss=label_loss, reg_loss=reg_loss,
                   total_loss=label_loss + penalty * reg_loss, predictions=predictions,
                   labels=batch["labels"], requests=requests)
    if "label_weights" in batch:
      outputs["label_weights"] = batch["label_weights"]
    return outputs

  @tf.function(autograph=False)
  def __call__(self, batch, requests=(0, 0)):
    """One step; `requests` = this worker's (save, stop) wishes as 0/1. Returns the losses
    (global means), this worker's predictions and labels, and the requests summed over all
    workers, so that every worker saves and stops at the same step (saving reads
    batch-norm statistics with a collective op: all workers must take part)."""
    requests = tf.cast(requests, tf.float32)
    outputs = self.strategy.run(self._replica_step, args=(batch, requests))
    first = lambda v: self.strategy.experimental_local_results(v)[0]
    gather = lambda v: tf.concat(self.strategy.experimental_local_results(v), axis=0)
    results = dict(label_loss=first(outputs["label_loss"]), reg_loss=first(outputs["reg_loss"]),
                   total_loss=first(outputs["total_loss"]), requests=first(outputs["requests"]))
    results.update({k: gather(outputs[k]) for k in ("predictions", "labels", "label_weights")
                    if k in outputs})
    return results
