"""Exports a trained model as a SavedModel that takes serialized records.

Serving signature `serving_default`: input `example_bytes` (a string vector of serialized
SequenceExamples or Examples), outputs `video_id`, `class_indexes` (int32 [B, top_k]) and
`predictions` (float [B, top_k], descending), as the original's export. Unlike the original,
the batch-norm statistics are exported too (it restored only the trainable variables).

  python export_model.py --train_dir=DIR [--check_point=N] [--export_dir=DIR/export/step_N]
"""
import os

import tensorflow as tf
from absl import flags
from absl import logging

import checkpoint_utils
import script_flags

FLAGS = flags.FLAGS


class ServingModule(tf.Module):
  """The model behind a parse -> predict -> top-k serving function."""

  def __init__(self, model, config, top_k: int = 20):
    super().__init__()
    self.model = model
    self.reader = config.reader()
    self.top_k = min(top_k, config.num_classes)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="example_bytes")],
               autograph=False)
  def serve(self, example_bytes):
    batch = self.reader.prepare_serialized_examples(example_bytes)
    predictions = self.model(batch["video_matrix"], batch["num_frames"],
                             training=False)["predictions"]
    scores, classes = tf.math.top_k(predictions, k=self.top_k, sorted=True)
    return {"video_id": batch["video_ids"], "class_indexes": classes, "predictions": scores}


def export_saved_model(model, config, export_dir: str, top_k: int = 20):
  """Writes the SavedModel to a temporary sibling directory, then renames it into place."""
  module = ServingModule(model, config, top_k)
  temporary = export_dir.rstrip("/") + ".tmp"
  if tf.io.gfile.exists(temporary):
    tf.io.gfile.rmtree(temporary)
  tf.saved_model.save(module, temporary, signatures={"serving_default": module.serve})
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.io.gfile.rename(temporary, export_dir)
  return export_dir


def main(unused_argv):
  logging.set_verbosity(logging.INFO)
  model, config, path = checkpoint_utils.load_trained_model(
      FLAGS.train_dir, FLAGS.check_point, script_flags.model_config_from_flags(),
      script_flags.explicit_model_flags(), FLAGS.inference_precision)
  export_dir = FLAGS.export_dir or os.path.join(
      FLAGS.train_dir, "export", "step_%d" % checkpoint_utils.checkpoint_step(path))
  export_saved_model(model, config, export_dir, FLAGS.top_k)
  logging.info("exported %s to %s", path, export_dir)


if __name__ == "__main__":
  script_flags.define_flags("inference")
  flags.DEFINE_string("export_dir", "", "Where to write the SavedModel (default: "
                      "<train_dir>/export/step_<N>).")
  script_flags.run(main)
