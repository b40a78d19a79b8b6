"""Evaluation of a model on a labelled set: GAP@top_k, hit@1, PERR, MAP and the average loss
over every record, as eval.py reports them for a checkpoint and the training loop for its
current weights (--eval_data_pattern); the TensorBoard layout both write into.

The model runs in inference mode: moving batch-norm statistics, deterministic frame sampling.
"""
import os
import time

import tensorflow as tf
from absl import logging

import eval_util
import losses
import readers
import utils

# TensorBoard runs under a train_dir: training's own summaries and the evaluations (eval.py's
# and those of train.py --eval_data_pattern), so that TensorBoard shows them as two runs.
TRAIN_RUN, VALIDATION_RUN = "train", "validation"


def summary_dir(train_dir: str, run: str) -> str:
  return os.path.join(train_dir, run)


def prediction_function(model, loss_name="CrossEntropyLoss", alpha=0.5):
  """(video_matrix, num_frames, labels) -> (predictions, mean loss), traced once per model."""
  loss_fn = losses.get_loss(loss_name, alpha)

  @tf.function(autograph=False)
  def predict(video_matrix, num_frames, labels):
    predictions = model(video_matrix, num_frames, training=False)["predictions"]
    return predictions, loss_fn.calculate_loss(predictions, labels)
  return predict


def evaluate(model, config, data_pattern, batch_size, num_readers, top_k,
             loss_name="CrossEntropyLoss", alpha=0.5, step=0, writer=None, predict=None,
             log_batches=True):
  """Runs the model over every record of data_pattern; returns EvaluationMetrics.get().

  Logs a line per batch (unless not log_batches) and eval.py's summary line, and writes the
  scalars with `writer` at `step`. `predict` (from prediction_function) lets successive
  evaluations share one traced graph."""
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
      if log_batches:
        logging.info("examples_processed: %d | global_step %d | Batch Hit@1: %.3f | "
                     "Batch PERR: %.3f | Batch Loss: %.3f | Examples_per_sec: %.3f",
                     examples, step, batch_metrics["hit_at_one"], batch_metrics["perr"],
                     batch_metrics["loss"], rate)
  except tf.errors.OpError as e:
    raise readers.describe_data_error(e, data_pattern)
  if examples == 0:
    raise utils.InputError("%s: no records to evaluate" % data_pattern)
  results = metrics.get()
  results["seconds"] = time.time() - start
  logging.info("epoch/eval number %d | Avg_Hit@1: %.3f | Avg_PERR: %.3f | MAP: %.3f | "
               "GAP: %.4f | Avg_Loss: %.6f", step, results["avg_hit_at_one"],
               results["avg_perr"], results["map"], results["gap"], results["avg_loss"])
  if writer is not None:
    write_scalars(writer, step, results)
  return results


def write_scalars(writer, step: int, results):
  """The original eval.py's TensorBoard scalars."""
  with writer.as_default(step=step):
    tf.summary.scalar("Epoch/Eval_Avg_Hit@1", results["avg_hit_at_one"])
    tf.summary.scalar("Epoch/Eval_Avg_Perr", results["avg_perr"])
    tf.summary.scalar("Epoch/Eval_Avg_Loss", results["avg_loss"])
    tf.summary.scalar("Epoch/Eval_MAP", results["map"])
    tf.summary.scalar("Epoch/Eval_GAP", results["gap"])
    tf.summary.scalar("GlobalStep/Eval_Example_Second",
                      results["num_examples"] / max(results["seconds"], 1e-9))
  writer.flush()
