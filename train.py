"""Trains a WILLOW model on YouTube-8M TFRecords (flag-compatible with the original train.py).

A custom TF2 loop under a tf.distribute strategy: the loss, l2 penalty, per-tensor gradient
clipping, staircase learning-rate decay counted in examples and TF1 Adam epsilon are the
original's (its train.py). Checkpoints go to --train_dir with the model configuration beside
them; training resumes from the latest checkpoint unless --start_new_model.
"""
import dataclasses

import willow.tf_env  # noqa: F401  (before TensorFlow loads)

import numpy as np
import tensorflow as tf
from absl import flags
from absl import logging

import readers
from willow import checkpoints
from willow import configuration
from willow import distribution
from willow import script_flags
from willow import training

FLAGS = flags.FLAGS


def start_new_model(train_dir: str):
  """The original deleted train_dir on --start_new_model; we do the same."""
  if tf.io.gfile.exists(train_dir):
    logging.info("--start_new_model: removing %s", train_dir)
    tf.io.gfile.rmtree(train_dir)


def train_options_from_flags() -> training.TrainOptions:
  """Every TrainOptions field comes from the flag of the same name (data_pattern from
  --train_data_pattern)."""
  flag_name = {"data_pattern": "train_data_pattern"}
  return training.TrainOptions(**{
      field.name: FLAGS[flag_name.get(field.name, field.name)].value
      for field in dataclasses.fields(training.TrainOptions)})


def main(unused_argv):
  logging.set_verbosity(logging.INFO)
  tf.debugging.set_log_device_placement(FLAGS.log_device_placement)
  if FLAGS.seed is not None:
    tf.random.set_seed(FLAGS.seed)
    np.random.seed(FLAGS.seed)
  script_flags.require_flags(nonempty=["train_data_pattern"], positive=["batch_size"])
  readers.match_files(FLAGS.train_data_pattern)  # an empty glob is an error before any work
  strategy = distribution.choose_strategy(FLAGS.distribution_strategy)
  is_chief = distribution.is_chief(strategy)
  if FLAGS.start_new_model and is_chief:
    start_new_model(FLAGS.train_dir)
  config = configuration.config_to_train(
      FLAGS.train_dir, script_flags.model_config_from_flags(),
      script_flags.explicit_model_flags(), FLAGS.start_new_model)
  if FLAGS.init_from_checkpoint and not checkpoints.list_checkpoints(FLAGS.train_dir):
    configuration.warn_if_trained_differently(FLAGS.init_from_checkpoint, config)
  training.Trainer(config, train_options_from_flags(), strategy).run()


if __name__ == "__main__":
  script_flags.define_flags("train")
  script_flags.run(main)
