"""The SavedModel export: a trained model behind a serving function that takes serialized
records.

Serving signature `serving_default`: input `example_bytes` (a string vector of serialized
SequenceExamples or Examples), outputs `video_id`, `class_indexes` (int32 [B, top_k]) and
`predictions` (float [B, top_k], descending), as the original's export_model.py. Unlike the
original, the batch-norm statistics are exported too (it restored only the trainable
variables).
"""
import tensorflow as tf


class ServingModule(tf.Module):
  """The model behind a parse -> predict -> top-k serving function."""

  def __init__(self, model, reader, top_k: int = 20):
    super().__init__()
    self.model = model
    self.reader = reader
    self.top_k = min(top_k, reader.num_classes)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="example_bytes")],
               autograph=False)
  def serve(self, example_bytes):
    batch = self.reader.prepare_serialized_examples(example_bytes)
    predictions = self.model(batch["video_matrix"], batch["num_frames"],
                             training=False)["predictions"]
    scores, classes = tf.math.top_k(predictions, k=self.top_k, sorted=True)
    return {"video_id": batch["video_ids"], "class_indexes": classes, "predictions": scores}


def export_saved_model(model, reader, export_dir: str, top_k: int = 20):
  """Writes the SavedModel of `model` reading records with `reader` to a temporary sibling
  directory, then renames it into place."""
  module = ServingModule(model, reader, top_k)
  temporary = export_dir.rstrip("/") + ".tmp"
  if tf.io.gfile.exists(temporary):
    tf.io.gfile.rmtree(temporary)
  tf.saved_model.save(module, temporary, signatures={"serving_default": module.serve})
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.io.gfile.rename(temporary, export_dir)
  return export_dir
