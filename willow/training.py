"""The training loop behind train.py, around the step of willow/train_step.py: restore or
initialize, the loop with its progress lines and summaries, the NaN guard, checkpoints (with
batch-norm calibration), SavedModel exports and the signals that stop it.

What differs from the original's loop, on purpose: batch-norm population statistics are
re-estimated before every checkpoint (precise BN), so that eval and inference, which use them,
see the right statistics at any step.
"""
import dataclasses
import os
import shutil
import signal
import tempfile
import time
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

import eval_util
import readers
import utils
from willow import checkpoints
from willow import distribution
from willow import evaluation
from willow import model_blocks
from willow import models
from willow import record_errors
from willow import saved_model
from willow import segments
from willow.train_step import TrainStep


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
  eval_data_pattern: str = ""
  eval_every_n_steps: int = 0


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
  """Steps/s, examples/s and the ETA to `last_step` (None: unknown), the step where `limit`
  (the flag that ends training there) stops it, over the last logging interval."""

  def __init__(self, global_batch: int, last_step: Optional[int] = None, limit: str = ""):
    self.global_batch, self.last_step_to_run, self.limit = global_batch, last_step, limit
    self.last_time, self.last_step = time.time(), None

  def rates(self, step: int):
    now = time.time()
    if self.last_step is None:
      self.last_step, self.last_time = step, now
      return None
    steps_per_sec = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = None
    if self.last_step_to_run is not None and steps_per_sec > 0:
      eta = max(self.last_step_to_run - step, 0) / steps_per_sec
    return steps_per_sec, steps_per_sec * self.global_batch, eta


def steps_for_epochs(num_records: int, num_epochs: int, global_batch: int,
                     replicas: int) -> int:
  """Steps of num_epochs passes over num_records records. Batches run across epoch
  boundaries: on one replica every example is in a step and the last one may be partial; on
  several, each worker drops its last partial batch (about one step fewer)."""
  examples = num_records * num_epochs
  return -(-examples // global_batch) if replicas == 1 else examples // global_batch


def format_duration(seconds) -> str:
  seconds = int(round(seconds))
  return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


# ----------------------------------------------------------------------------------------
# The trainer.

# GAP@20 of the evaluations while training: the challenge's metric (eval.py's --top_k).
EVAL_TOP_K = 20

def make_train_dir(train_dir: str):
  """Creates train_dir; a path that cannot be a directory is a one-line error."""
  try:
    tf.io.gfile.makedirs(train_dir)
  except (tf.errors.OpError, OSError) as e:
    raise utils.InputError("cannot create --train_dir=%s: %s" % (train_dir,
                                                                record_errors.error_message(e)))


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
    self.chief = distribution.is_chief(strategy)
    self.replicas = strategy.num_replicas_in_sync
    self.global_batch = options.batch_size * self.replicas
    # Segment-rated data: one example per rated segment, the loss over its rated classes.
    self.reader = (segments.segment_reader(config, options.segment_size)
                   if options.segment_labels else readers.reader_for(config))
    self.stop_requested = False
    # Non-chief workers must take part in saving; they write to a scratch directory.
    self.checkpoint_dir = options.train_dir if self.chief else tempfile.mkdtemp(
        prefix="willow-worker-")
    self.train_step = TrainStep(config, options, strategy)
    self.model, self.optimizer = self.train_step.model, self.train_step.optimizer
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self.checkpoint_dir, max_to_keep=options.keep_checkpoints or None,
        checkpoint_name="model.ckpt", step_counter=self.optimizer.iterations)
    if self.chief:
      make_train_dir(options.train_dir)
    self.writer = (tf.summary.create_file_writer(
        evaluation.summary_dir(options.train_dir, evaluation.TRAIN_RUN)) if self.chief
                   else tf.summary.create_noop_writer())
    self._calibration_batches = None  # built at the first save
    self._calibrated_step = None  # the step whose weights the batch-norm statistics are of
    self._evaluated_step = None
    self._eval_writer = self._eval_predict = None  # made at the first evaluation
    self._config_saved = False  # model_config.json is written with this run's first save

  @property
  def step(self) -> int:
    return self.train_step.step

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

  # -- checkpoints -----------------------------------------------------------------------

  def restore_or_initialize(self):
    # Every worker resumes from the chief's latest checkpoint (in train_dir), not from its
    # own scratch directory, which starts empty.
    if self.chief:
      remove_interrupted_saves(self.options.train_dir)
    found = checkpoints.list_checkpoints(self.options.train_dir)
    if found:
      latest = self._restore_newest_readable(found)
      logging.info("resumed from %s (step %d, learning rate %g)", latest, self.step,
                   float(self.optimizer.learning_rate))
    elif self.options.init_from_checkpoint:
      checkpoints.initialize_from(self.model, self.options.init_from_checkpoint)
    else:
      logging.info("starting from scratch")
    if distribution.num_workers(self.strategy) > 1:
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

  def _restore_newest_readable(self, newest_first) -> str:
    """Restores the newest checkpoint or, if it cannot be read back (damaged after it was
    written: our saves are never left half-written), the newest earlier one that can be."""
    for path in newest_first:
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return path
      except (tf.errors.OpError, AssertionError, ValueError) as e:
        logging.warning("cannot resume from %s (%s); trying the checkpoint before it", path,
                        record_errors.error_message(e).split(". ")[0])
    raise utils.InputError("no checkpoint in --train_dir=%s can be read back; start over with "
                           "--start_new_model" % self.options.train_dir)

  def calibrate(self) -> int:
    """Re-estimates the batch-norm statistics of the current weights (once per step: a save
    and an evaluation of the same step share them). Returns the batches used."""
    if (self.options.bn_calibration_batches <= 0 or not model_blocks_has_batch_norm(self.model)
        or self._calibrated_step == self.step):
      return 0
    if self._calibration_batches is None:  # tracing a pipeline takes seconds: build it once
      self._calibration_batches = self.calibration_batches()
    # In float32 under bfloat16 training: the statistics are those of the float32/float64
    # forward pass that evaluation and inference run.
    with self.model.computing_in(self.model.output_dtype):
      used = calibrate_batch_norm(self.model, self._calibration_batches,
                                  self.options.bn_calibration_batches)
    self._calibrated_step = self.step
    return used

  def save(self, reason: str):
    started = time.time()
    used = self.calibrate()
    calibration_seconds = time.time() - started
    self._check_weights_are_finite()
    if self.chief and not self._config_saved:
      # With the first checkpoint, not before: a run that fails earlier leaves no configuration
      # that could pass for a trained model's.
      checkpoints.save_config(self.options.train_dir, self.config)
      self._config_saved = True
    try:
      path = self.manager.save(checkpoint_number=self.step)
    except (tf.errors.OpError, OSError) as e:
      raise self.peer_stopped(e) or utils.InputError(
          "cannot save the checkpoint of step %d in %s: %s; the latest complete checkpoint is "
          "%s" % (self.step, self.checkpoint_dir, record_errors.error_message(e),
                  checkpoints.find_checkpoint(self.checkpoint_dir)))
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

  def peer_stopped(self, exc) -> Optional[utils.InputError]:
    """When exc says that another worker stopped (killed, preempted, unreachable), what
    happened and what to do, in one line; else None. Every worker stops with it: a
    synchronous step cannot go on without one of them."""
    peer = distribution.stopped_peer(exc, self.strategy)
    if peer is None:
      return None
    last = checkpoints.find_checkpoint(self.options.train_dir) if tf.io.gfile.isdir(
        self.options.train_dir) else None
    resume = ("the last checkpoint is step %d (%s): restart every worker with the same "
              "command to resume from it" % (checkpoints.checkpoint_step(last), last) if last
              else "no checkpoint was saved yet: restart every worker with the same command "
              "to start again")
    return utils.InputError("%s stopped or cannot be reached, so this worker stopped too at "
                            "step %d; %s" % (peer, self.step, resume))

  def evaluate(self):
    """Evaluates the current weights on --eval_data_pattern as eval.py evaluates a checkpoint
    saved now: batch-norm statistics re-estimated as for a save, inference mode, GAP@20. Logs
    eval.py's line and writes its scalars to <train_dir>/validation. Every worker evaluates
    (the re-estimation is a collective op); the chief writes."""
    if self._evaluated_step == self.step:
      return
    self.calibrate()
    if self._eval_predict is None:
      self._eval_writer = (tf.summary.create_file_writer(evaluation.summary_dir(
          self.options.train_dir, evaluation.VALIDATION_RUN)) if self.chief
                           else tf.summary.create_noop_writer())
      self._eval_predict = evaluation.prediction_function(
          self.model, self.options.label_loss, self.options.alpha)
    # Scores in float32 even when training computes in bfloat16 (--mixed_precision).
    with self.model.computing_in(self.model.output_dtype):
      evaluation.evaluate(self.model, self.config, self.options.eval_data_pattern,
                          self.options.batch_size, self.options.num_readers, EVAL_TOP_K,
                          self.options.label_loss, self.options.alpha, self.step,
                          self._eval_writer, self._eval_predict, log_batches=False)
    self._evaluated_step = self.step

  def _should_evaluate(self, step) -> bool:
    n = self.options.eval_every_n_steps
    return bool(self.options.eval_data_pattern) and n > 0 and step % n == 0

  def export(self):
    # Every worker exports, as every worker saves (reading the batch-norm statistics is a
    # collective op under MultiWorkerMirroredStrategy); only the chief's copy is kept.
    root = self.options.train_dir if self.chief else self.checkpoint_dir
    export_dir = os.path.join(root, "export", "step_%d" % self.step)
    saved_model.export_saved_model(self.model, self.reader, export_dir)
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
        line += " | ETA %s (%s)" % (format_duration(eta), progress.limit)
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

  def step_limit(self) -> Tuple[Optional[int], str]:
    """(the step where training will stop, the flag that stops it there): the nearer of
    --max_steps and the end of --num_epochs passes from here (each run makes num_epochs passes,
    as the original's); (None, "") when neither is known."""
    o = self.options
    limits = [] if o.max_steps is None else [(o.max_steps, "--max_steps=%d" % o.max_steps)]
    if o.num_epochs and not o.segment_labels:  # (a video holds several rated segments)
      files = readers.match_files(o.data_pattern)
      records, exact = readers.count_records(files)
      steps = steps_for_epochs(records, o.num_epochs, self.global_batch, self.replicas)
      logging.info("%s%d records in %d file(s): --num_epochs=%d is %d steps of %d examples",
                   "" if exact else "about ", records, len(files), o.num_epochs, steps,
                   self.global_batch)
      limits.append((self.step + steps, "--num_epochs=%d" % o.num_epochs))
    return min(limits) if limits else (None, "")

  def _should_save(self, step, last_save_time, last_save_step):
    o = self.options
    if o.save_checkpoint_steps > 0:
      return step - last_save_step >= o.save_checkpoint_steps
    return time.time() - last_save_time >= o.save_checkpoint_secs

  def run(self):
    logging.info("model %s: {:,} trainable parameters".format(
        self.model.num_trainable_parameters), self.config.model)
    try:
      self._restore_and_train()
    except tf.errors.OpError as e:  # outside the loop: restoring, the last export
      raise self.peer_stopped(e) or e
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
    progress = Progress(self.global_batch, *self.step_limit())
    last_save_time, last_save_step, last_export_step = time.time(), self.step, self.step
    reason = "--num_epochs=%s reached" % o.num_epochs
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
          reason = "--max_steps=%d reached" % o.max_steps
          break
        if stop_requested:
          reason = "stopped by signal"
          break
        if save_requested:
          self.save("periodic")
          last_save_time, last_save_step = time.time(), step
        if self._should_evaluate(step):
          self.evaluate()
        if o.export_model_steps > 0 and step - last_export_step >= o.export_model_steps:
          self.export()
          last_export_step = step
      if o.segment_labels and self.step == start_step:
        raise utils.InputError("%s: no rated segment to train on (records without "
                               "segment_labels?)" % o.data_pattern)
      # Still under the signal handlers, so that a SIGTERM now cannot cut the save short.
      self.save(reason)
      if o.eval_data_pattern and reason != "stopped by signal":
        self.evaluate()
    except tf.errors.OpError as e:
      raise self.peer_stopped(e) or readers.describe_data_error(e, o.data_pattern)
    finally:
      for s, handler in previous_handlers.items():
        signal.signal(s, handler)
    if reason != "stopped by signal" and o.export_model_steps > 0:
      self.export()
    self.writer.flush()
    logging.info("training finished at step %d (%s)", self.step, reason)
