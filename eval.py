"""Evaluates checkpoints of a train_dir on a labelled set (flag-compatible with eval.py).

Reports GAP@top_k, hit@1, PERR, MAP and the average loss over the whole set, logs them and
writes them as TensorBoard scalars in <train_dir>/validation (the run train.py's own
--eval_data_pattern evaluations also write). A --train_dir that does not exist is an error,
not a directory to wait for. Without --run_once it waits for each new
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

import file_averaging
import readers
import utils
from willow import checkpoints
from willow import configuration
from willow import prediction_metrics
from willow import evaluation
from willow import script_flags
from willow import segments

FLAGS = flags.FLAGS


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
      writer = tf.summary.create_file_writer(evaluation.summary_dir(
          checkpoints.train_dir_of(FLAGS.train_dir), evaluation.VALIDATION_RUN))
      config = configuration.config_to_restore(FLAGS.train_dir, requested, explicit)
      model = checkpoints.build_model_to_restore(config, FLAGS.inference_precision)
      predict = (segments.prediction_function if FLAGS.segment_labels else
                 evaluation.prediction_function)(model, FLAGS.label_loss, FLAGS.alpha)
    checkpoints.restore_trained_weights(model, config, path)
    step = checkpoints.checkpoint_step(path)
    if FLAGS.segment_labels:
      class_ids = (segments.read_class_ids(FLAGS.segment_label_ids_file, config.num_classes)
                   if FLAGS.segment_label_ids_file else None)
      segments.evaluate(model, config, FLAGS.eval_data_pattern, FLAGS.batch_size,
                        FLAGS.num_readers, FLAGS.segment_size, FLAGS.segment_max_pred,
                        class_ids, FLAGS.label_loss, FLAGS.alpha, step, writer, predict)
    else:
      evaluation.evaluate(model, config, FLAGS.eval_data_pattern, FLAGS.batch_size,
                          FLAGS.num_readers, FLAGS.top_k, FLAGS.label_loss, FLAGS.alpha, step,
                          writer, predict)


if __name__ == "__main__":
  script_flags.run(main, script_flags.EVAL)
