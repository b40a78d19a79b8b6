"""Trains a WILLOW model on YouTube-8M TFRecords (flag-compatible with the original train.py).

A custom TF2 loop under a tf.distribute strategy: the loss, l2 penalty, per-tensor gradient
clipping, staircase learning-rate decay counted in examples and TF1 Adam epsilon are the
original's (SPEC.md 3). Checkpoints go to --train_dir with the model configuration beside
them; training resumes from the latest checkpoint unless --start_new_model.
"""

import os

# TensorFlow's default CPU allocator page-faults every large buffer afresh; its BFC allocator
# reuses them (train steps and reader decoding 1.5-6x faster, see BENCHMARKS.md). It must be
# chosen before TensorFlow loads.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import numpy as np
import tensorflow as tf
from absl import flags
from absl import logging

import readers
import script_flags
import training

FLAGS = flags.FLAGS


def resolve_training_config(train_dir: str):
  """The configuration to train: the saved one when resuming, else the flags'."""
  requested = script_flags.model_config_from_flags()
  saved = script_flags.load_saved_config(train_dir)
  if saved is None or FLAGS.start_new_model:
    return requested
  return script_flags.reconcile_config(saved, requested, script_flags.explicit_model_flags(),
                                       train_dir)


def start_new_model(train_dir: str):
  """The original deleted train_dir on --start_new_model; we do the same."""
  if tf.io.gfile.exists(train_dir):
    logging.info("--start_new_model: removing %s", train_dir)
    tf.io.gfile.rmtree(train_dir)


def main(unused_argv):
  logging.set_verbosity(logging.INFO)
  tf.debugging.set_log_device_placement(FLAGS.log_device_placement)
  if FLAGS.seed is not None:
    tf.random.set_seed(FLAGS.seed)
    np.random.seed(FLAGS.seed)
  script_flags.require_flags(nonempty=["train_data_pattern"], positive=["batch_size"])
  readers.match_files(FLAGS.train_data_pattern)  # an empty glob is an error before any work
  strategy = training.choose_strategy(FLAGS.distribution_strategy)
  is_chief = training.is_chief(strategy)
  if FLAGS.start_new_model and is_chief:
    start_new_model(FLAGS.train_dir)
  config = resolve_training_config(FLAGS.train_dir)
  options = training.TrainOptions(
      train_dir=FLAGS.train_dir, data_pattern=FLAGS.train_data_pattern,
      batch_size=FLAGS.batch_size, num_readers=FLAGS.num_readers,
      num_epochs=FLAGS.num_epochs, max_steps=FLAGS.max_steps,
      base_learning_rate=FLAGS.base_learning_rate,
      learning_rate_decay=FLAGS.learning_rate_decay,
      learning_rate_decay_examples=FLAGS.learning_rate_decay_examples,
      optimizer=FLAGS.optimizer, clip_gradient_norm=FLAGS.clip_gradient_norm,
      regularization_penalty=FLAGS.regularization_penalty,
      label_loss=FLAGS.label_loss, alpha=FLAGS.alpha,
      bn_calibration_batches=FLAGS.bn_calibration_batches,
      save_checkpoint_secs=FLAGS.save_checkpoint_secs,
      save_checkpoint_steps=FLAGS.save_checkpoint_steps,
      keep_checkpoints=FLAGS.keep_checkpoints, log_steps=FLAGS.log_steps,
      export_model_steps=FLAGS.export_model_steps,
      init_from_checkpoint=FLAGS.init_from_checkpoint, seed=FLAGS.seed,
      jit_compile=FLAGS.jit_compile, mixed_precision=FLAGS.mixed_precision)
  training.Trainer(config, options, strategy).run()


if __name__ == "__main__":
  script_flags.define_flags("train")
  script_flags.run(main)
