"""Trains a WILLOW model on YouTube-8M TFRecords (flag-compatible with the original train.py).

A custom TF2 loop under a tf.distribute strategy: the loss, l2 penalty, per-tensor gradient
clipping, staircase learning-rate decay counted in examples and TF1 Adam epsilon are the
original's (its train.py). Checkpoints go to --train_dir with the model configuration beside
them; training resumes from the latest checkpoint unless --start_new_model. The flags of the
run are written to <train_dir>/train_flags.txt (rerun: --flagfile=<train_dir>/train_flags.txt).

  python train.py --train_data_pattern=GLOB --train_dir=DIR --model=NAME [flags]
"""
import os

import willow.tf_env  # noqa: F401  (before TensorFlow loads)

import numpy as np
import tensorflow as tf
from absl import flags
from absl import logging

import readers
import utils
from willow import checkpoints
from willow import configuration
from willow import distribution
from willow import fileio
from willow import script_flags
from willow import training

FLAGS = flags.FLAGS
FLAGS_FILE = "train_flags.txt"


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
  script_flags.require_flags("train_data_pattern")
  readers.match_files(FLAGS.train_data_pattern)  # an empty glob is an error before any work
  if FLAGS.eval_data_pattern and FLAGS.segment_labels:
    raise utils.InputError("--eval_data_pattern evaluates video labels while training; evaluate "
                           "a --segment_labels model's checkpoints with eval.py --segment_labels")
  if FLAGS.eval_data_pattern:
    readers.match_files(FLAGS.eval_data_pattern)
  elif FLAGS.eval_every_n_steps:
    raise utils.InputError("--eval_every_n_steps=%d needs --eval_data_pattern" %
                           FLAGS.eval_every_n_steps)
  strategy = distribution.choose_strategy(FLAGS.distribution_strategy)
  is_chief = distribution.is_chief(strategy)
  if FLAGS.start_new_model and is_chief:
    start_new_model(FLAGS.train_dir)
  config = configuration.config_to_train(
      FLAGS.train_dir, script_flags.model_config_from_flags(),
      script_flags.explicit_model_flags(), FLAGS.start_new_model)
  if FLAGS.init_from_checkpoint and not checkpoints.list_checkpoints(FLAGS.train_dir):
    configuration.warn_if_trained_differently(FLAGS.init_from_checkpoint, config)
  trainer = training.Trainer(config, script_flags.train_options_from_flags(), strategy)
  if is_chief:
    fileio.atomic_write_text(os.path.join(FLAGS.train_dir, FLAGS_FILE),
                             script_flags.flagfile_text(script_flags.TRAIN, config=config))
  trainer.run()


if __name__ == "__main__":
  script_flags.run(main, script_flags.TRAIN)
