"""Writes the top-k predictions of a trained model as a CSV (flag-compatible with the
original inference.py).

Output: `VideoId,LabelConfidencePairs`, then one line per video, `<id>,<class> <score> ...`
with the top_k classes by descending score and scores with 6 decimals. Predictions do not
depend on batch size or batch composition (moving batch-norm statistics, deterministic frame
sampling), unlike the original's. The file is written under a temporary name and renamed once
complete. With --num_tasks=N --task_index=i (or a TF_CONFIG task) the input files are split
in N parts and this process writes part i; `python inference.py --merge_parts ...` joins them
once all N are there. Video ids are written byte for byte, UTF-8 or not.

With --segment_labels it scores every --segment_size-frame segment instead and writes the 2019
challenge's `Class,Segments` file (willow/segments.py, docs/segments.md); parts of a sharded
run keep the scores, so that --merge_parts ranks them together.
"""
import glob
import re
import time

import willow.tf_env  # noqa: F401  (before TensorFlow loads)

import tensorflow as tf
from absl import flags
from absl import logging

import readers
import utils
from willow import configuration
from willow import distribution
from willow import fileio
from willow import script_flags
from willow import segments
from willow import submission_csv

FLAGS = flags.FLAGS


def inference_uses_xla(jit_compile, precision: str, model=None) -> bool:
  """XLA compiles the forward pass with --jit_compile=true, or auto in float32 (faster for the
  gated DBoF and the RNNs, BENCHMARKS.md) unless the model has a hidden layer of at least
  utils.LONG_CONTRACTION inputs (full-size NetVLAD / NetFV / NetRVLAD are faster without).
  Not by default in float64: XLA's kernels differ with the batch shape, which would give up
  scores identical across batch sizes."""
  mode = utils.jit_compile_mode(jit_compile)
  if mode != "auto":
    return mode == "true"
  return precision == "float32" and not utils.has_long_hidden_contraction(model)


def make_predict_fn(model, top_k: int, jit_compile: bool = False):
  @tf.function(autograph=False, jit_compile=jit_compile)
  def predict(video_matrix, num_frames):
    predictions = model(video_matrix, num_frames, training=False)["predictions"]
    # top_k breaks ties by the lower class index, so equal scores keep a fixed order.
    scores, classes = tf.math.top_k(predictions, k=top_k, sorted=True)
    return scores, classes
  return predict


def task_split(task_index, num_tasks):
  """(index, count) of this process's part: from the flags, else from TF_CONFIG."""
  if num_tasks is not None or task_index is not None:
    num_tasks, task_index = num_tasks or 1, task_index or 0
  else:
    # The chief (if any) takes part 0 and worker i part i + 1, as the tasks of a training
    # cluster; other task types (evaluator, ps) do not split the input.
    jobs, task_type, task_id = distribution.tf_config_cluster()
    chiefs = len(jobs.get("chief", []))
    num_tasks = distribution.cluster_workers(jobs)
    if task_type in ("chief", "worker") and num_tasks > 1:
      task_index = (task_id or 0) + (chiefs if task_type == "worker" else 0)
    else:
      num_tasks, task_index = 1, 0
  if not 0 <= task_index < num_tasks:
    raise utils.InputError("--task_index=%d is outside [0, --num_tasks=%d)" % (task_index,
                                                                             num_tasks))
  return task_index, num_tasks


def part_file_name(output_file: str, task_index: int, num_tasks: int) -> str:
  if num_tasks == 1:
    return output_file
  return "%s.part-%05d-of-%05d" % (output_file, task_index, num_tasks)


# Inference holds each batch several times over (decoded, cast to --inference_precision, the
# model's activations), so its peak memory follows the videos read at a time. At most this many
# bytes of decoded input are read at a time, whatever --batch_size: 48 videos of 300 frames of
# rgb + audio in float64, all of a 8192-video batch of video-level features. The scores do not
# depend on it (float64) and smaller batches are no slower.
MAX_BATCH_INPUT_BYTES = 128 << 20


def videos_per_read(reader, batch_size: int, compute_dtype) -> int:
  """--batch_size, or fewer videos when a batch of them would exceed MAX_BATCH_INPUT_BYTES."""
  frames = getattr(reader, "max_frames", 1)  # video-level readers: one vector a video
  bytes_per_video = frames * sum(reader.feature_sizes) * tf.as_dtype(compute_dtype).size
  return max(1, min(batch_size, MAX_BATCH_INPUT_BYTES // bytes_per_video))


def run_inference(model, config, data_pattern, output_file, batch_size, top_k, num_readers,
                  task_index=0, num_tasks=1, skip_corrupt_records=False, jit_compile=False):
  """Predicts every record matched by data_pattern and writes output_file atomically.

  Reads at most videos_per_read videos at a time; logs progress every batch_size videos."""
  reader = readers.reader_for(config)
  dataset = readers.get_input_dataset(
      reader, data_pattern, videos_per_read(reader, batch_size, model.compute_dtype),
      num_readers=num_readers, shuffle=False, num_epochs=1, num_shards=num_tasks,
      shard_index=task_index, skip_corrupt_records=skip_corrupt_records)
  predict = make_predict_fn(model, top_k, jit_compile)
  start, count = time.time(), 0
  with fileio.atomic_output(output_file, "wb") as out:
    out.write(submission_csv.HEADER_LINE)
    try:
      for batch in dataset:
        scores, classes = predict(batch["video_matrix"], batch["num_frames"])
        # Ids are copied as bytes: one that is not UTF-8 (a corrupt record) must not end a run.
        out.write(submission_csv.format_rows(batch["video_ids"].numpy(), classes.numpy(),
                                             scores.numpy()))
        previous, count = count, count + int(scores.shape[0])
        if count // batch_size > previous // batch_size:
          logging.info("%d videos written | %.1f videos/s", count,
                       count / max(time.time() - start, 1e-9))
    except tf.errors.OpError as e:
      raise readers.describe_data_error(e, data_pattern)
  logging.info("wrote %s: %d videos in %.1f s", output_file, count, time.time() - start)
  return count


def merge_parts(output_file: str, parts):
  """Concatenates part CSVs (each with its header) into output_file, in part order."""
  with fileio.atomic_output(output_file, "wb") as out:
    out.write(submission_csv.HEADER_LINE)
    for part in parts:
      with open(part, "rb") as f:
        if f.readline() != submission_csv.HEADER_LINE:
          raise utils.InputError("%s: not an inference CSV part (bad header)" % part)
        for line in f:
          out.write(line)


def complete_parts(output_file: str):
  """The part files of output_file in order, once every part of one split is there."""
  pattern = re.compile(re.escape(output_file) + r"\.part-(\d{5})-of-(\d{5})")
  found = {}
  for path in glob.glob(glob.escape(output_file) + ".part-*-of-*"):
    match = pattern.fullmatch(path)
    if match:
      found[int(match.group(1)), int(match.group(2))] = path
  if not found:
    raise utils.InputError("no parts %s.part-*-of-* to merge" % output_file)
  splits = sorted({num_tasks for _, num_tasks in found})
  if len(splits) > 1:
    raise utils.InputError(
        "%s has parts of %s different splits (of %s tasks): remove the stale ones" % (
            output_file, len(splits), " and ".join(map(str, splits))))
  num_tasks = splits[0]
  missing = [part_file_name(output_file, index, num_tasks) for index in range(num_tasks)
             if (index, num_tasks) not in found]
  if missing:
    raise utils.InputError("%d of %d parts missing, e.g. %s (a process has not finished?)" % (
        len(missing), num_tasks, missing[0]))
  return [found[index, num_tasks] for index in range(num_tasks)]


def main(unused_argv):
  logging.set_verbosity(logging.INFO)
  script_flags.require_flags("output_file")
  if FLAGS.merge_parts:
    parts = complete_parts(FLAGS.output_file)
    if segments.is_segment_part(parts[0]):
      segments.merge_parts(FLAGS.output_file, parts, FLAGS.segment_max_pred)
    else:
      merge_parts(FLAGS.output_file, parts)
    logging.info("merged %d parts into %s", len(parts), FLAGS.output_file)
    return
  script_flags.require_flags("input_data_pattern")
  readers.match_files(FLAGS.input_data_pattern)
  model, config, path = configuration.load_trained_model(
      FLAGS.train_dir, FLAGS.check_point, script_flags.model_config_from_flags(),
      script_flags.explicit_model_flags(), FLAGS.inference_precision)
  if FLAGS.top_k > config.num_classes and not FLAGS.segment_labels:
    raise utils.InputError("--top_k=%d exceeds the model's %d classes" % (FLAGS.top_k,
                                                                       config.num_classes))
  task_index, num_tasks = task_split(FLAGS.task_index, FLAGS.num_tasks)
  output_file = part_file_name(FLAGS.output_file, task_index, num_tasks)
  use_xla = inference_uses_xla(FLAGS.jit_compile, FLAGS.inference_precision, model)
  logging.info("forward pass %s XLA (--jit_compile=%s, --inference_precision=%s)",
               "with" if use_xla else "without", FLAGS.jit_compile, FLAGS.inference_precision)
  if FLAGS.segment_labels:
    class_ids = (segments.read_class_ids(FLAGS.segment_label_ids_file, config.num_classes)
                 if FLAGS.segment_label_ids_file else list(range(config.num_classes)))
    segments.predict(model, config, FLAGS.input_data_pattern, output_file, FLAGS.batch_size,
                     FLAGS.num_readers, FLAGS.segment_size, class_ids, FLAGS.segment_max_pred,
                     task_index, num_tasks, FLAGS.skip_corrupt_records, use_xla)
    return
  run_inference(model, config, FLAGS.input_data_pattern, output_file, FLAGS.batch_size,
                FLAGS.top_k, FLAGS.num_readers, task_index, num_tasks,
                FLAGS.skip_corrupt_records, use_xla)


if __name__ == "__main__":
  script_flags.run(main, script_flags.INFERENCE)
