"""Exports a trained model as a SavedModel that takes serialized records (the serving
signature is described in willow/saved_model.py).

  python export_model.py --train_dir=DIR [--check_point=N] [--export_dir=DIR/export/step_N]
"""
import os

import willow.tf_env  # noqa: F401  (before TensorFlow loads)

from absl import flags
from absl import logging

import readers
from willow import checkpoints
from willow import configuration
from willow import saved_model
from willow import script_flags

FLAGS = flags.FLAGS


def main(unused_argv):
  logging.set_verbosity(logging.INFO)
  model, config, path = configuration.load_trained_model(
      FLAGS.train_dir, FLAGS.check_point, script_flags.model_config_from_flags(),
      script_flags.explicit_model_flags(), FLAGS.inference_precision)
  export_dir = FLAGS.export_dir or os.path.join(
      FLAGS.train_dir, "export", "step_%d" % checkpoints.checkpoint_step(path))
  saved_model.export_saved_model(model, readers.reader_for(config), export_dir, FLAGS.top_k)
  logging.info("exported %s to %s", path, export_dir)


if __name__ == "__main__":
  script_flags.run(main, script_flags.EXPORT)
