"""The training loop behind train.py: strategy, optimizer, schedule, step, checkpoints.

Faithful to the original step (SPEC.md 3.2): total = penalty * l2 + label loss; each gradient
tensor clipped to --clip_gradient_norm on its own (not a global norm); staircase decay counted
in examples; TF1 optimizer constants (Adam epsilon 1e-8). What differs, on purpose: batch-norm
population statistics are re-estimated before every checkpoint (precise BN), so that eval and
inference, which use them, see the right statistics at any step.
"""
import dataclasses
import json
import os
import shutil
import signal
import tempfile
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import eval_util
import losses
import model_blocks
import models
import readers
import script_flags
import segments
import utils


@dataclasses.dataclass
class TrainOptions:
  train_dir: str
  data_pattern: str
  batch_size: int = 1024
  num_readers: int = 8
  num_epochs: Optional[int] = 15
  max_steps: Optional[int] = None
  base_learning_rate: float = 0.001
  learning_rate_decay: float = 0.9
  learning_rate_decay_examples: float = 4000000
  optimizer: str = "AdamOptimizer"
  clip_gradient_norm: float = 1.0
  regularization_penalty: float = 1.0
  label_loss: str = "CrossEntropyLoss"
  alpha: float = 0.5
  bn_calibration_batches: int = 100
  save_checkpoint_secs: int = 900
  save_checkpoint_steps: int = 0
  keep_checkpoints: int = 5
  log_steps: int = 10
  export_model_steps: int = 10000
  init_from_checkpoint: str = ""
  seed: Optional[int] = None
  jit_compile: str = "auto"
  mixed_precision: str = "none"
  segment_labels: bool = False
  segment_size: int = 5


# ----------------------------------------------------------------------------------------
# Strategy.

def choose_strategy(name: str) -> tf.distribute.Strategy:
  """auto: MultiWorkerMirrored when TF_CONFIG names a cluster, Mirrored with several GPUs,
  else the default strategy."""
  cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  legacy = sorted(set(cluster) - {"chief", "worker", "evaluator"})
  if legacy:
    # The original's TF1 layout (master + workers + parameter servers) has no equivalent:
    # training is synchronous, every worker holds all the variables.
    raise utils.InputError(
        "TF_CONFIG cluster has %s tasks: use \"chief\" (for the original's \"master\") and "
        "\"worker\" only; parameter servers are not used" % "/".join(legacy))
  if name == "auto":
    if len(cluster.get("chief", [])) + len(cluster.get("worker", [])) > 1:
      name = "multi_worker"
    elif len(tf.config.list_logical_devices("GPU")) > 1:
      name = "mirrored"
    else:
      name = "default"
  if name == "default":
    strategy = tf.distribute.get_strategy()
  elif name == "mirrored":
    strategy = tf.distribute.MirroredStrategy()
  elif name == "multi_worker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  else:
    raise utils.InputError("--distribution_strategy must be auto, default, mirrored or "
                           "multi_worker, got %r" % name)
  logging.info("distribution strategy %s: %d replica(s) on %d worker(s)",
               strategy_class_name(strategy), strategy.num_replicas_in_sync,
               num_workers(strategy))
  return strategy


def strategy_class_name(strategy) -> str:
  """The name under tf.distribute (MultiWorkerMirroredStrategy's class is called
  CollectiveAllReduceStrategy), else the class name (_DefaultDistributionStrategy)."""
  api_names = type(strategy).__dict__.get("_tf_api_names", ())
  return api_names[0].split(".")[-1] if api_names else type(strategy).__name__


def num_workers(strategy) -> int:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return 1
  spec = resolver.cluster_spec().as_dict()
  return len(spec.get("worker", [])) + len(spec.get("chief", []))


def is_chief(strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


# ----------------------------------------------------------------------------------------
# Optimizer and learning rate.

class ExampleStaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
  """lr = base * decay ^ floor(step * global_batch / decay_examples) (SPEC.md 3.2)."""

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


def make_optimizer(name: str, learning_rate):
  name = _KERAS_NAMES.get(name, name)
  if name not in _OPTIMIZERS:
    raise utils.InputError("unknown --optimizer %r; valid: %s" % (
        name, ", ".join(sorted(list(_OPTIMIZERS) + list(_KERAS_NAMES)))))
  return _OPTIMIZERS[name](learning_rate)


# ----------------------------------------------------------------------------------------
# Precise batch-norm statistics.

def calibrate_batch_norm(model, batches, num_batches: int) -> int:
  """Sets every batch-norm layer's moving mean/variance to the population statistics of
  its input over `num_batches` training-mode batches (an exact average, weighted by batch
  size). Trainable weights are untouched. Returns the number of batches used."""
  if num_batches <= 0 or not model_blocks_has_batch_norm(model):
    return 0
  recorded_layers = []

  @tf.function(autograph=False)
  def batch_statistics(video_matrix, num_frames):
    with model_blocks.recording_batch_statistics() as records:
      model(video_matrix, num_frames, training=True)
    recorded_layers[:] = [layer for layer, _, _ in records]
    return [(mean, variance + tf.square(mean)) for _, mean, variance in records]

  sums, total, used = None, 0.0, 0
  for batch in batches.take(num_batches):
    stats = batch_statistics(batch["video_matrix"], batch["num_frames"])
    size = float(batch["num_frames"].shape[0])
    stats = [(m.numpy() * size, s.numpy() * size) for m, s in stats]
    sums = stats if sums is None else [(a + m, b + s) for (a, b), (m, s) in zip(sums, stats)]
    total += size
    used += 1
  for layer, (mean_sum, square_sum) in zip(recorded_layers, sums or []):
    mean = mean_sum / total
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(np.maximum(square_sum / total - np.square(mean), 0.0))
  return used


def model_blocks_has_batch_norm(model) -> bool:
  return any(isinstance(m, model_blocks.BatchNorm) for m in model.submodules)


# ----------------------------------------------------------------------------------------
# Progress.

class Progress:
  """Steps/s, examples/s and ETA over the last logging interval."""

  def __init__(self, global_batch: int, max_steps: Optional[int]):
    self.global_batch, self.max_steps = global_batch, max_steps
    self.last_time, self.last_step = time.time(), None

  def rates(self, step: int):
    now = time.time()
    if self.last_step is None:
      self.last_step, self.last_time = step, now
      return None
    steps_per_sec = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = None
    if self.max_steps and steps_per_sec > 0:
      eta = max(self.max_steps - step, 0) / steps_per_sec
    return steps_per_sec, steps_per_sec * self.global_batch, eta


def format_duration(seconds) -> str:
  seconds = int(round(seconds))
  return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


# ----------------------------------------------------------------------------------------
# The trainer.

def make_train_dir(train_dir: str):
  """Creates train_dir; a path that cannot be a directory is a one-line error."""
  try:
    tf.io.gfile.makedirs(train_dir)
  except (tf.errors.OpError, OSError) as e:
    raise utils.InputError("cannot create --train_dir=%s: %s" % (train_dir,
                                                                readers.error_message(e)))


# What a save killed half-way leaves in train_dir (TensorFlow writes the data under
# <prefix>_temp and renames it, then writes the state file `checkpoint` via a temporary;
# fileio.atomic_output writes model_config.json via .model_config.json.*.tmp). None of it is
# ever read: resuming follows the state file.
_INTERRUPTED_SAVE_PATTERNS = ("model.ckpt-*_temp", "checkpoint.tmp*", "*.tempstate*",
                              ".model_config.json.*.tmp")


def remove_interrupted_saves(train_dir: str):
  leftovers = [path for pattern in _INTERRUPTED_SAVE_PATTERNS
               for path in tf.io.gfile.glob(os.path.join(train_dir, pattern))]
  for path in leftovers:
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    else:
      tf.io.gfile.remove(path)
  if leftovers:
    logging.warning("removed what an interrupted save left in %s: %s", train_dir,
                    ", ".join(os.path.basename(p) for p in sorted(leftovers)))


class Trainer:
  """Builds the model under the strategy, restores or initializes, and runs the loop."""

  def __init__(self, config: models.ModelConfig, options: TrainOptions,
               strategy: tf.distribute.Strategy):
    self.config, self.options, self.strategy = config, options, strategy
    self.chief = is_chief(strategy)
    self.replicas = strategy.num_replicas_in_sync
    self.global_batch = options.batch_size * self.replicas
    # Segment-rated data: one example per rated segment, the loss over its rated classes.
    self.reader = (segments.segment_reader(config, options.segment_size)
                   if options.segment_labels else config.reader())
    self.loss = losses.get_loss(options.label_loss, options.alpha)
    self.stop_requested = False
    # Non-chief workers must take part in saving; they write to a scratch directory.
    self.checkpoint_dir = options.train_dir if self.chief else tempfile.mkdtemp(
        prefix="willow-worker-")
    with strategy.scope():
      self.model = models.build_model(config)
      if options.segment_labels:
        self.model.segment_size = options.segment_size
      schedule = ExampleStaircaseDecay(options.base_learning_rate, options.learning_rate_decay,
                                       options.learning_rate_decay_examples, self.global_batch)
      self.optimizer = make_optimizer(options.optimizer, schedule)
      self.optimizer.build(self.model.trainable_variables)
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self.checkpoint_dir, max_to_keep=options.keep_checkpoints or None,
        checkpoint_name="model.ckpt", step_counter=self.optimizer.iterations)
    if self.chief:
      make_train_dir(options.train_dir)
    self.writer = (tf.summary.create_file_writer(options.train_dir) if self.chief
                   else tf.summary.create_noop_writer())
    self._calibration_batches = None  # built at the first save
    self._set_compute_dtype()
    self._compile_train_step()

  def _set_compute_dtype(self):
    """--mixed_precision=bf16 computes in bfloat16 (weights are cast at use, variables, the
    loss, gradients and batch-norm statistics stay float32). fp16 would need loss scaling
    and brings nothing on CPUs: not offered."""
    dtypes = {"none": tf.float32, "bf16": tf.bfloat16}
    if self.options.mixed_precision not in dtypes:
      raise utils.InputError("--mixed_precision must be none or bf16, got %r"
                             % self.options.mixed_precision)
    self.model.compute_dtype = dtypes[self.options.mixed_precision]

  def _compile_train_step(self):
    """Compiles the forward and backward pass with XLA when --jit_compile asks for it (auto:
    on one replica without --seed). XLA fuses the step's element-wise work, transposes and
    batch-norm statistics into few kernels (the Gated NetVLAD step runs in ~0.6-0.7 of the
    time), but it ignores the op seeds of the frame samplers, so a seeded run would not
    repeat, and it is not used across replicas. The clip and the optimizer's update stay
    outside XLA: there FusedAdam is one fused kernel a tensor, ~0.4 s less a NetVLAD step than
    XLA's compiled update (BENCHMARKS.md)."""
    mode = utils.jit_compile_mode(self.options.jit_compile)
    use_xla = mode == "true" or (mode == "auto" and self.replicas == 1
                                 and self.options.seed is None)
    if use_xla:
      self._loss_and_gradients = tf.function(self._loss_and_gradients.python_function,
                                             jit_compile=True, autograph=False)
    logging.info("forward and backward pass %s XLA (--jit_compile=%s)",
                 "with" if use_xla else "without", mode)

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  # -- data ------------------------------------------------------------------------------

  def _dataset(self, input_context=None, shuffle=True, num_epochs=None, seed=None):
    # Each element is one replica's batch: tf.distribute hands consecutive elements of a
    # worker's dataset to its replicas in turn, so a step of 2 local replicas sees the same
    # records as one batch of twice the size.
    shards, index = 1, 0
    if input_context is not None:
      shards, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    return readers.get_input_dataset(
        self.reader, self.options.data_pattern, self.options.batch_size,
        num_readers=self.options.num_readers,
        shuffle=shuffle, num_epochs=num_epochs, seed=seed, num_shards=shards,
        shard_index=index, drop_remainder=self.replicas > 1)

  def distributed_dataset(self):
    # Only the tensors the step uses: an XLA-compiled step cannot take the string ids.
    def step_inputs(batch):
      return {k: batch[k] for k in ("video_matrix", "num_frames", "labels", "label_weights")
              if k in batch}
    return self.strategy.distribute_datasets_from_function(
        lambda ctx: self._dataset(ctx, num_epochs=self.options.num_epochs,
                                  seed=self.options.seed).map(
                                      tf.autograph.experimental.do_not_convert(step_inputs)))

  def calibration_batches(self):
    seed = None if self.options.seed is None else self.options.seed + 1
    return self._dataset(num_epochs=None, seed=seed)

  # -- step ------------------------------------------------------------------------------

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
      gradients = [clip_by_norm(g, self.options.clip_gradient_norm) for g in gradients]
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
  def train_step(self, batch, requests=(0, 0)):
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

  # -- checkpoints -----------------------------------------------------------------------

  def restore_or_initialize(self):
    # Every worker resumes from the chief's latest checkpoint (in train_dir), not from its
    # own scratch directory, which starts empty.
    if self.chief:
      remove_interrupted_saves(self.options.train_dir)
    latest = tf.train.latest_checkpoint(self.options.train_dir)
    if latest:
      latest = self._restore_newest_readable(latest)
      logging.info("resumed from %s (step %d, learning rate %g)", latest, self.step,
                   float(self.optimizer.learning_rate))
    elif self.options.init_from_checkpoint:
      import checkpoint_import  # only needed for this path
      checkpoint_import.initialize_from(self.model, self.options.init_from_checkpoint)
    else:
      logging.info("starting from scratch")
    if num_workers(self.strategy) > 1:
      self._check_all_workers_are_at_the_same_step()

  def _check_all_workers_are_at_the_same_step(self):
    """A worker that cannot read train_dir would start at step 0 while the others resume,
    and the workers' collective ops would no longer match: fail clearly instead."""
    local_step = lambda: tf.cast(self.optimizer.iterations, tf.float64)
    total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(local_step),
                                 axis=None)
    if int(total) != self.step * self.replicas:
      raise utils.InputError(
          "the workers start from different steps (this one from %d): every worker must "
          "read the chief's checkpoints in --train_dir=%s (use storage all of them see)"
          % (self.step, self.options.train_dir))

  def _restore_newest_readable(self, latest: str) -> str:
    """Restores `latest` or, if it cannot be read back (damaged after it was written: our
    saves are never left half-written), the newest earlier checkpoint that can be."""
    state = tf.train.get_checkpoint_state(self.options.train_dir)
    older = [p for p in reversed(list(state.all_model_checkpoint_paths)) if p != latest]
    for path in [latest] + older:
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return path
      except (tf.errors.OpError, AssertionError, ValueError) as e:
        logging.warning("cannot resume from %s (%s); trying the checkpoint before it", path,
                        readers.error_message(e).split(". ")[0])
    raise utils.InputError("no checkpoint in --train_dir=%s can be read back; start over with "
                           "--start_new_model" % self.options.train_dir)

  def save(self, reason: str):
    used, started = 0, time.time()
    if self.options.bn_calibration_batches > 0 and model_blocks_has_batch_norm(self.model):
      if self._calibration_batches is None:  # tracing a pipeline takes seconds: build it once
        self._calibration_batches = self.calibration_batches()
      used = calibrate_batch_norm(self.model, self._calibration_batches,
                                  self.options.bn_calibration_batches)
    calibration_seconds = time.time() - started
    self._check_weights_are_finite()
    try:
      path = self.manager.save(checkpoint_number=self.step)
    except (tf.errors.OpError, OSError) as e:
      raise utils.InputError(
          "cannot save the checkpoint of step %d in %s: %s; the latest complete checkpoint is "
          "%s" % (self.step, self.checkpoint_dir, readers.error_message(e),
                  tf.train.latest_checkpoint(self.checkpoint_dir)))
    logging.info("saved %s (%s%s)", path if self.chief else "worker checkpoint", reason,
                 ", batch-norm statistics over %d batches in %.1f s" % (used, calibration_seconds)
                 if used else "")
    return path

  def _check_weights_are_finite(self):
    """NaN or Inf must never reach a checkpoint, where every resume would load it. The loss
    check in the loop sees the weights before a step's update; this sees them after it.
    (Batch-norm statistics are left out: computed from these weights and finite inputs, and
    reading them would be a collective op across workers.)"""
    for variable in list(self.model.trainable_variables) + list(self.optimizer.variables):
      floating = tf.as_dtype(variable.dtype).is_floating  # Keras 3 dtypes are strings
      if floating and not bool(tf.reduce_all(tf.math.is_finite(variable))):
        raise FloatingPointError(
            "training stopped at step %d: %s holds NaN or Inf after the step's update; not "
            "saved; the last checkpoint in %s is intact" % (self.step, variable.name,
                                                           self.options.train_dir))

  def export(self):
    import export_model  # only needed for exports
    # Every worker exports, as every worker saves (reading the batch-norm statistics is a
    # collective op under MultiWorkerMirroredStrategy); only the chief's copy is kept.
    root = self.options.train_dir if self.chief else self.checkpoint_dir
    export_dir = os.path.join(root, "export", "step_%d" % self.step)
    export_model.export_saved_model(self.model, self.config, export_dir)
    if self.chief:
      logging.info("exported SavedModel to %s", export_dir)

  # -- loop ------------------------------------------------------------------------------

  def _request_stop(self, signum, unused_frame):
    logging.warning("received signal %d: saving a checkpoint, then stopping", signum)
    self.stop_requested = True

  def _log(self, step, outputs, progress):
    rates = progress.rates(step)
    predictions = outputs["predictions"].numpy()
    labels = outputs["labels"].numpy()
    loss = float(outputs["label_loss"])
    if "label_weights" in outputs:  # segments: the rated pairs only; hit@1 means nothing
      gap = segments.rated_pairs_gap(predictions, labels, outputs["label_weights"].numpy())
      hit_at_one = None
      line = "step %d | loss %.4f | GAP (rated pairs) %.3f" % (step, loss, gap)
    else:
      gap = eval_util.calculate_gap(predictions, labels)
      hit_at_one = eval_util.calculate_hit_at_one(predictions, labels)
      line = "step %d | loss %.4f | GAP %.3f | hit@1 %.3f" % (step, loss, gap, hit_at_one)
    if rates:
      steps_per_sec, examples_per_sec, eta = rates
      line += " | %.2f steps/s | %.1f examples/s" % (steps_per_sec, examples_per_sec)
      if eta is not None:
        line += " | ETA %s" % format_duration(eta)
    logging.info(line)
    with self.writer.as_default(step=step):
      tf.summary.scalar("model/label_loss", loss)
      tf.summary.scalar("model/reg_loss", float(outputs["reg_loss"]))
      tf.summary.scalar("model/Training_GAP", gap)
      if hit_at_one is not None:
        tf.summary.scalar("model/Training_Hit@1", hit_at_one)
      tf.summary.scalar("learning_rate", float(self.optimizer.learning_rate))
      if rates:
        tf.summary.scalar("global_step/Examples/Second", rates[1])

  def _should_save(self, step, last_save_time, last_save_step):
    o = self.options
    if o.save_checkpoint_steps > 0:
      return step - last_save_step >= o.save_checkpoint_steps
    return time.time() - last_save_time >= o.save_checkpoint_secs

  def run(self):
    o = self.options
    logging.info("model %s: {:,} trainable parameters".format(
        self.model.num_trainable_parameters), self.config.model)
    if self.chief:
      tf.io.gfile.makedirs(o.train_dir)
      script_flags.save_config(o.train_dir, self.config)
    try:
      self._restore_and_train()
    finally:
      if not self.chief:
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

  def _restore_and_train(self):
    o = self.options
    self.restore_or_initialize()
    if o.max_steps is not None and self.step >= o.max_steps:
      logging.info("step %d already reached --max_steps=%d: nothing to do", self.step,
                   o.max_steps)
      return
    previous_handlers = {s: signal.signal(s, self._request_stop)
                         for s in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(self.global_batch, o.max_steps)
    last_save_time, last_save_step, last_export_step = time.time(), self.step, self.step
    reason = "epoch limit reached"
    start_step = self.step
    try:
      for batch in self.distributed_dataset():
        # Time- and signal-driven decisions are this worker's; the step sums them over all
        # workers so that all save or stop together.
        requests = [float(self._should_save(self.step + 1, last_save_time, last_save_step)),
                    float(self.stop_requested)]
        outputs = self.train_step(batch, tf.constant(requests, tf.float32))
        save_requested, stop_requested = outputs["requests"].numpy() > 0
        step = self.step
        if not np.isfinite(float(outputs["total_loss"])):
          raise FloatingPointError(
              "training stopped at step %d: the loss is %s; the last checkpoint in %s is "
              "intact" % (step, float(outputs["total_loss"]), o.train_dir))
        if step % o.log_steps == 0 or step == 1:
          self._log(step, outputs, progress)
        if o.max_steps is not None and step >= o.max_steps:
          reason = "reached --max_steps"
          break
        if stop_requested:
          reason = "stopped by signal"
          break
        if save_requested:
          self.save("periodic")
          last_save_time, last_save_step = time.time(), step
        if o.export_model_steps > 0 and step - last_export_step >= o.export_model_steps:
          self.export()
          last_export_step = step
      if o.segment_labels and self.step == start_step:
        raise utils.InputError("%s: no rated segment to train on (records without "
                               "segment_labels?)" % o.data_pattern)
      # Still under the signal handlers, so that a SIGTERM now cannot cut the save short.
      self.save(reason)
    except tf.errors.OpError as e:
      raise readers.describe_data_error(e, o.data_pattern)
    finally:
      for s, handler in previous_handlers.items():
        signal.signal(s, handler)
    if reason != "stopped by signal" and o.export_model_steps > 0:
      self.export()
    self.writer.flush()
    logging.info("training finished at step %d (%s)", self.step, reason)
