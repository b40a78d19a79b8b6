"""Evaluates checkpoints of a train_dir on a labelled set (flag-compatible with eval.py).

Reports GAP@top_k, hit@1, PERR, MAP and the average loss over the whole set, logs them and
writes them as TensorBoard scalars in train_dir. Without --run_once it waits for each new
checkpoint (sleeping --eval_interval_secs between checks, where the original busy-looped) and
restores it into the model built for the first one (the original rebuilt its graph each time).
The model runs in inference mode: moving batch-norm statistics, deterministic frame sampling.

With --predictions_csv=P.csv it scores a predictions CSV instead (inference.py's or
file_averaging.py's): GAP@top_k, MAP and hit@1 against the labels of --eval_data_pattern's
records, of which only the ids and labels are read (no model, no feature flags).

With --segment_labels (segment-rated records) it reports the segment MAP of the 2019 challenge
and the GAP over rated pairs instead (willow/segments.py, docs/segments.md).
"""
import time

import willow.tf_env  # noqa: F401  (before TensorFlow loads)

import tensorflow as tf
from absl import flags
from absl import logging

import eval_util
import file_averaging
import losses
import readers
import utils
from willow import checkpoints
from willow import configuration
from willow import prediction_metrics
from willow import script_flags
from willow import segments

FLAGS = flags.FLAGS


def prediction_function(model, loss_name="CrossEntropyLoss", alpha=0.5):
  """(video_matrix, num_frames, labels) -> (predictions, mean loss), traced once per model."""
  loss_fn = losses.get_loss(loss_name, alpha)

  @tf.function(autograph=False)
  def predict(video_matrix, num_frames, labels):
    predictions = model(video_matrix, num_frames, training=False)["predictions"]
    return predictions, loss_fn.calculate_loss(predictions, labels)
  return predict


def evaluate(model, config, data_pattern, batch_size, num_readers, top_k,
             loss_name="CrossEntropyLoss", alpha=0.5, step=0, writer=None, predict=None):
  """Runs the model over every record of data_pattern; returns EvaluationMetrics.get().

  `predict` (from prediction_function) lets successive checkpoints share one traced graph."""
  reader = readers.reader_for(config)
  dataset = readers.get_input_dataset(reader, data_pattern, batch_size,
                                      num_readers=num_readers, shuffle=False, num_epochs=1)
  predict = predict or prediction_function(model, loss_name, alpha)
  metrics = eval_util.EvaluationMetrics(config.num_classes, top_k)
  start, examples = time.time(), 0
  try:
    for batch in dataset:
      predictions, loss = predict(batch["video_matrix"], batch["num_frames"], batch["labels"])
      batch_metrics = metrics.accumulate(predictions.numpy(), batch["labels"].numpy(),
                                         float(loss))
      examples += int(predictions.shape[0])
      rate = examples / max(time.time() - start, 1e-9)
      logging.info("examples_processed: %d | global_step %d | Batch Hit@1: %.3f | "
                   "Batch PERR: %.3f | Batch Loss: %.3f | Examples_per_sec: %.3f", examples,
                   step, batch_metrics["hit_at_one"], batch_metrics["perr"],
                   batch_metrics["loss"], rate)
  except tf.errors.OpError as e:
    raise readers.describe_data_error(e, data_pattern)
  if examples == 0:
    raise utils.InputError("%s: no records to evaluate" % data_pattern)
  results = metrics.get()
  logging.info("epoch/eval number %d | Avg_Hit@1: %.3f | Avg_PERR: %.3f | MAP: %.3f | "
               "GAP: %.4f | Avg_Loss: %.6f", step, results["avg_hit_at_one"],
               results["avg_perr"], results["map"], results["gap"], results["avg_loss"])
  if writer is not None:
    with writer.as_default(step=step):
      tf.summary.scalar("Epoch/Eval_Avg_Hit@1", results["avg_hit_at_one"])
      tf.summary.scalar("Epoch/Eval_Avg_Perr", results["avg_perr"])
      tf.summary.scalar("Epoch/Eval_Avg_Loss", results["avg_loss"])
      tf.summary.scalar("Epoch/Eval_MAP", results["map"])
      tf.summary.scalar("Epoch/Eval_GAP", results["gap"])
      tf.summary.scalar("GlobalStep/Eval_Example_Second", rate)
    writer.flush()
  return results


def new_checkpoints(train_dir, check_point=-1, run_once=False, interval_secs=60,
                    sleep=time.sleep):
  """Yields the checkpoint to evaluate, then (unless run_once or check_point) each newer one as
  it appears, checking every interval_secs (the original busy-looped)."""
  last = None
  while True:
    path = checkpoints.find_checkpoint(train_dir, check_point)
    if path is not None and path != last:
      yield path
      last = path
      if run_once or check_point >= 0:
        return
      continue
    if run_once and path is None:
      raise utils.InputError("train_dir %s holds no checkpoint" % train_dir)
    logging.info("waiting %d s for a new checkpoint in %s", interval_secs, train_dir)
    sleep(interval_secs)


def score_predictions_csv(path, data_pattern, num_classes, top_k):
  """Prints GAP@top_k, MAP and hit@1 of a predictions CSV against the labels in the records
  of data_pattern (only their ids and labels are read); returns them."""
  labels = readers.read_video_labels(data_pattern, num_classes)
  predictions = file_averaging.parse_prediction_file(path, num_classes)
  results = prediction_metrics.score_predictions(predictions, labels, num_classes, top_k,
                                                 data_pattern)
  print("GAP@%d: %.4f | MAP: %.4f | hit@1: %.4f | %d videos (%s against %s)" % (
      top_k, results["gap"], results["map"], results["hit_at_one"], results["num_videos"],
      path, data_pattern))
  if results["num_unpredicted"]:
    print("%d labelled videos have no predictions in %s: counted as misses"
          % (results["num_unpredicted"], path))
  return results


def main(unused_argv):
  logging.set_verbosity(logging.INFO)
  script_flags.require_flags("eval_data_pattern")
  if FLAGS.predictions_csv:
    score_predictions_csv(FLAGS.predictions_csv, FLAGS.eval_data_pattern, FLAGS.num_classes,
                          FLAGS.top_k)
    return
  readers.match_files(FLAGS.eval_data_pattern)
  requested = script_flags.model_config_from_flags()
  explicit = script_flags.explicit_model_flags()
  model = config = predict = writer = None
  # Nothing is created before a checkpoint is found: a mistyped --train_dir is an error
  # (new_checkpoints), not a new directory to watch.
  for path in new_checkpoints(FLAGS.train_dir, FLAGS.check_point, FLAGS.run_once,
                              FLAGS.eval_interval_secs):
    if model is None:  # built and traced once, then each new checkpoint is restored into it
      writer = tf.summary.create_file_writer(FLAGS.train_dir)
      config = configuration.config_to_restore(FLAGS.train_dir, requested, explicit)
      model = checkpoints.build_model_to_restore(config, FLAGS.inference_precision)
      predict = (segments.prediction_function if FLAGS.segment_labels else
                 prediction_function)(model, FLAGS.label_loss, FLAGS.alpha)
    checkpoints.restore_trained_weights(model, config, path)
    step = checkpoints.checkpoint_step(path)
    if FLAGS.segment_labels:
      class_ids = (segments.read_class_ids(FLAGS.segment_label_ids_file, config.num_classes)
                   if FLAGS.segment_label_ids_file else None)
      segments.evaluate(model, config, FLAGS.eval_data_pattern, FLAGS.batch_size,
                        FLAGS.num_readers, FLAGS.segment_size, FLAGS.segment_max_pred,
                        class_ids, FLAGS.label_loss, FLAGS.alpha, step, writer, predict)
    else:
      evaluate(model, config, FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.num_readers,
               FLAGS.top_k, FLAGS.label_loss, FLAGS.alpha, step, writer, predict)


if __name__ == "__main__":
  script_flags.run(main, script_flags.EVAL)
