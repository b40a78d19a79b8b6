"""The scripts as a user runs them: command lines, logs, outputs, errors, determinism."""
import os
import re
import shutil
import stat
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import eval as eval_script
import inference
import make_synthetic_data
import readers
import utils
from willow import checkpoints
from willow import configuration
from willow import evaluation
from willow import fileio
from willow import models
from willow import readme_configs
from willow import saved_model
from willow import submission_csv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 12


def run_script(script, args, cwd=None, umask=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, script)] + list(args),
                        capture_output=True, text=True, cwd=cwd, env=env, timeout=900,
                        preexec_fn=None if umask is None else lambda: os.umask(umask))


def file_mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("features"))
  # One seed for every partition: they then share the class prototypes.
  for partition, count, labels in (
      [("train", 400, True), ("validate", 120, True), ("test", 70, False)]):
    make_synthetic_data.generate_partition(
        directory, partition, num_videos=count, num_shards=2, num_classes=NUM_CLASSES,
        seed=0, with_labels=labels, min_frames=20, max_frames_gen=80,
        video_level=True)
  return directory


SMALL_NETVLAD = ["--model=NetVLADModelLF", "--frame_features=True",
                 "--feature_names=rgb,audio", "--feature_sizes=1024,128",
                 "--netvlad_cluster_size=8", "--netvlad_hidden_size=32", "--iterations=20",
                 "--netvlad_relu=False", "--gating=True", "--moe_prob_gating=True",
                 "--num_classes=%d" % NUM_CLASSES]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, data_dir):
  """A small gated NetVLAD trained by train.py on the generated data (module-wide)."""
  train_dir = str(tmp_path_factory.mktemp("netvlad"))
  result = run_script("train.py", SMALL_NETVLAD + [
      "--train_data_pattern=%s/*a*??.tfrecord" % data_dir, "--train_dir=" + train_dir,
      "--batch_size=16", "--base_learning_rate=0.003", "--max_step=150", "--log_steps=50",
      "--bn_calibration_batches=10", "--export_model_steps=0", "--seed=3"])
  assert result.returncode == 0, result.stderr[-3000:]
  return train_dir, result.stderr


def test_train_logs_parameters_progress_and_saves_its_configuration(trained_dir):
  train_dir, log = trained_dir
  model = models.build_model(models.ModelConfig(
      model="NetVLADModelLF", feature_names=("rgb", "audio"), feature_sizes=(1024, 128),
      frame_features=True, netvlad_cluster_size=8, netvlad_hidden_size=32, iterations=20,
      netvlad_relu=False, gating=True, moe_prob_gating=True, num_classes=NUM_CLASSES))
  assert "model NetVLADModelLF: {:,} trainable parameters".format(
      model.num_trainable_parameters) in log
  assert "step 100 | loss" in log and "examples/s | ETA" in log and "GAP" in log
  assert os.path.exists(os.path.join(train_dir, "model.ckpt-150.index"))
  saved = models.ModelConfig.from_json(open(os.path.join(train_dir, "model_config.json")).read())
  assert saved.netvlad_cluster_size == 8 and saved.moe_prob_gating
  # Written under a temporary name and renamed, with the mode open(path, "w") gives.
  for name in ("model_config.json", "train_flags.txt"):
    assert file_mode(os.path.join(train_dir, name)) == fileio.plain_file_mode(), name
  assert any(name.startswith("events.out.tfevents")
             for name in os.listdir(os.path.join(train_dir, "train")))


def test_training_beats_an_untrained_model_on_held_out_data(trained_dir, data_dir):
  train_dir, _ = trained_dir
  model, config, _ = configuration.load_trained_model(train_dir, -1, models.ModelConfig(), [])
  pattern = os.path.join(data_dir, "validate*.tfrecord")
  trained = evaluation.evaluate(model, config, pattern, 64, 2, top_k=20)["gap"]
  untrained = evaluation.evaluate(models.build_model(config), config, pattern, 64, 2,
                                  top_k=20)["gap"]
  assert trained > 0.5 and trained > untrained + 0.3, (trained, untrained)


def test_eval_cli_warns_once_about_flags_that_differ_from_the_saved_model(trained_dir,
                                                                          data_dir):
  train_dir, _ = trained_dir
  result = run_script("eval.py", [
      "--train_dir=" + train_dir, "--eval_data_pattern=%s/validate*.tfrecord" % data_dir,
      "--run_once=True", "--batch_size=64", "--model=NetVLADModelLF",
      "--moe_prob_gating=False", "--netvlad_cluster_size=8"])
  assert result.returncode == 0, result.stderr[-2000:]
  warnings = [l for l in result.stderr.splitlines() if "ignoring --" in l]
  assert len(warnings) == 1 and "--moe_prob_gating=False" in warnings[0]
  assert "netvlad_cluster_size" not in warnings[0]  # equal to the saved value
  assert "GAP: 0." in result.stderr and "MAP:" in result.stderr


def read_csv(path):
  with open(path) as f:
    return f.read().splitlines()


def record_ids(pattern):
  """The video ids of the frame-level records matched by pattern, in file and record order."""
  return [tf.train.SequenceExample.FromString(record.numpy()).context.feature["id"]
          .bytes_list.value[0].decode()
          for path in sorted(tf.io.gfile.glob(pattern))
          for record in tf.data.TFRecordDataset(path)]


def check_submission(lines, video_ids, top_k, num_classes):
  """An inference CSV: one row per video in input order, each with top_k distinct classes
  whose scores are finite probabilities in decreasing order."""
  assert lines[0] == "VideoId,LabelConfidencePairs"
  assert [line.split(",")[0] for line in lines[1:]] == video_ids
  for line in lines[1:]:
    tokens = line.split(",")[1].split(" ")
    classes, scores = [int(c) for c in tokens[0::2]], [float(s) for s in tokens[1::2]]
    assert len(classes) == len(set(classes)) == top_k, line
    assert all(0 <= c < num_classes for c in classes), line
    assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True), line


def test_inference_is_independent_of_batch_size(trained_dir, data_dir, tmp_path):
  train_dir, _ = trained_dir
  outputs = []
  for batch_size, umask in ((1, 0o027), (64, 0o002)):  # the CSV's mode follows the umask
    output = str(tmp_path / ("b%d.csv" % batch_size))
    result = run_script("inference.py", [
        "--train_dir=" + train_dir, "--output_file=" + output, "--top_k=5",
        "--input_data_pattern=%s/test*.tfrecord" % data_dir, "--batch_size=%d" % batch_size],
        umask=umask)
    assert result.returncode == 0, result.stderr[-2000:]
    assert file_mode(output) == 0o666 & ~umask
    outputs.append(read_csv(output))
  assert outputs[0] == outputs[1]
  assert outputs[0][0] == "VideoId,LabelConfidencePairs" and len(outputs[0]) == 71
  video_id, pairs = outputs[0][1].split(",")
  tokens = pairs.split(" ")
  scores = [float(s) for s in tokens[1::2]]
  assert len(tokens) == 10 and scores == sorted(scores, reverse=True)
  assert all(len(s.split(".")[1]) == 6 for s in tokens[1::2])


def test_inference_reads_a_bounded_number_of_videos_whatever_the_batch_size(
    trained_dir, data_dir, tmp_path, monkeypatch):
  """Peak memory follows the videos decoded at a time: --batch_size=8192 reads batches of at
  most MAX_BATCH_INPUT_BYTES of input and writes the same bytes as small batches."""
  frame_reader = readers.get_reader(True, ["rgb", "audio"], [1024, 128])
  assert inference.videos_per_read(frame_reader, 8192, tf.float64) == (
      (128 << 20) // (300 * 1152 * 8)) == 48
  assert inference.videos_per_read(frame_reader, 8192, tf.float32) == 97
  assert inference.videos_per_read(frame_reader, 20, tf.float64) == 20
  video_reader = readers.get_reader(False, ["mean_rgb", "mean_audio"], [1024, 128])
  assert inference.videos_per_read(video_reader, 8192, tf.float64) == 8192
  model, config, _ = configuration.load_trained_model(trained_dir[0], -1, models.ModelConfig(),
                                                         [])
  pattern = "%s/test*.tfrecord" % data_dir
  inference.run_inference(model, config, pattern, str(tmp_path / "b7.csv"), 7, 5, 2)
  sizes = []
  make_predict_fn = inference.make_predict_fn

  def recording_predict_fn(*args, **kwargs):
    predict = make_predict_fn(*args, **kwargs)
    def recording(video_matrix, num_frames):
      sizes.append(int(video_matrix.shape[0]))
      return predict(video_matrix, num_frames)
    return recording
  monkeypatch.setattr(inference, "make_predict_fn", recording_predict_fn)
  monkeypatch.setattr(inference, "MAX_BATCH_INPUT_BYTES", 3 * 300 * 1152 * 8 + 1)
  inference.run_inference(model, config, pattern, str(tmp_path / "b8192.csv"), 8192, 5, 2)
  assert max(sizes) == 3 and sum(sizes) == 70
  with open(tmp_path / "b7.csv", "rb") as small, open(tmp_path / "b8192.csv", "rb") as large:
    assert small.read() == large.read()


def test_inference_in_two_parts_merges_to_the_single_process_output(trained_dir, data_dir,
                                                                    tmp_path):
  train_dir, _ = trained_dir
  output = str(tmp_path / "parts.csv")
  common = ["--train_dir=" + train_dir, "--output_file=" + output, "--top_k=3",
            "--input_data_pattern=%s/test*.tfrecord" % data_dir, "--batch_size=32"]
  model, config, _ = configuration.load_trained_model(train_dir, -1, models.ModelConfig(), [])
  whole = str(tmp_path / "whole.csv")
  inference.run_inference(model, config, "%s/test*.tfrecord" % data_dir, whole, 32, 3, 2)
  for index in range(2):
    result = run_script("inference.py", common + ["--num_tasks=2", "--task_index=%d" % index])
    assert result.returncode == 0, result.stderr[-2000:]
  result = run_script("inference.py", ["--output_file=" + output, "--merge_parts=True"])
  assert result.returncode == 0, result.stderr[-2000:]
  # Two files, two tasks: part i is file i, so the merge is the single-process output row
  # for row (parts in task order, records in file order).
  assert read_csv(output) == read_csv(whole)


def test_merge_waits_for_every_part_of_one_split(tmp_path):
  output = str(tmp_path / "merged.csv")

  def write_part(index, num_tasks, rows):
    with open(inference.part_file_name(output, index, num_tasks), "wb") as f:
      f.write(submission_csv.HEADER_LINE + b"".join(row + b"\n" for row in rows))

  write_part(0, 3, [b"a,1 0.500000"])
  write_part(2, 3, [b"c,1 0.500000"])
  with pytest.raises(utils.InputError, match=r"1 of 3 parts missing, e\.g\. .*merged\.csv\."
                                       r"part-00001-of-00003 \(a process has not finished\?\)"):
    inference.complete_parts(output)
  write_part(1, 3, [b"b\xff,2 0.250000"])  # ids are copied byte for byte
  write_part(0, 2, [b"stale,1 0.5"])
  with pytest.raises(utils.InputError,
                     match="parts of 2 different splits \\(of 2 and 3 tasks\\)"):
    inference.complete_parts(output)
  os.remove(inference.part_file_name(output, 0, 2))
  inference.merge_parts(output, inference.complete_parts(output))
  with open(output, "rb") as f:
    assert f.read() == (b"VideoId,LabelConfidencePairs\na,1 0.500000\nb\xff,2 0.250000\n"
                        b"c,1 0.500000\n")


def test_inference_writes_an_id_that_is_not_utf8_byte_for_byte(trained_dir, data_dir, tmp_path):
  # Such an id (a corrupt but parseable record) used to end inference with a traceback.
  train_dir, _ = trained_dir
  files = sorted(tf.io.gfile.glob(os.path.join(data_dir, "test*.tfrecord")))
  records = [r.numpy() for r in tf.data.TFRecordDataset(files[:1]).take(3)]
  example = tf.train.SequenceExample.FromString(records[1])
  example.context.feature["id"].bytes_list.value[0] = b"\xb0id\xff"
  records[1] = example.SerializeToString()
  pattern = str(tmp_path / "odd.tfrecord")
  with tf.io.TFRecordWriter(pattern) as writer:
    for record in records:
      writer.write(record)
  model, config, _ = configuration.load_trained_model(train_dir, -1, models.ModelConfig(), [])
  output = str(tmp_path / "odd.csv")
  assert inference.run_inference(model, config, pattern, output, 2, 3, 1) == 3
  with open(output, "rb") as f:
    lines = f.read().splitlines()
  assert len(lines) == 4 and lines[2].startswith(b"\xb0id\xff,")


def test_saved_model_export_matches_inference(trained_dir, data_dir, tmp_path):
  train_dir, _ = trained_dir
  model, config, _ = configuration.load_trained_model(train_dir, -1, models.ModelConfig(), [])
  export_dir = saved_model.export_saved_model(model, readers.reader_for(config),
                                              str(tmp_path / "export"), top_k=4)
  served = tf.saved_model.load(export_dir).signatures["serving_default"]
  files = sorted(tf.io.gfile.glob(os.path.join(data_dir, "test*.tfrecord")))
  records = [r.numpy() for r in tf.data.TFRecordDataset(files).take(10)]
  out = served(example_bytes=tf.constant(records))
  csv = str(tmp_path / "out.csv")
  inference.run_inference(model, config, os.path.join(data_dir, "test*.tfrecord"), csv, 10, 4, 1)
  for line, video_id, classes, scores in zip(read_csv(csv)[1:], out["video_id"].numpy(),
                                             out["class_indexes"].numpy(),
                                             out["predictions"].numpy()):
    expected = submission_csv.format_rows([video_id], classes[None], scores[None])
    assert line == expected.decode().strip()


@pytest.mark.parametrize("model", ["MoeModel", "LogisticModel"])
def test_video_level_models_train_now(model, data_dir, tmp_path):
  """The original could not train any video-level model (its train.py never passed
  is_training to MoeModel, and it had no LogisticModel); here they learn the held-out data's
  classes."""
  train_dir = str(tmp_path / model)
  result = run_script("train.py", [
      "--train_data_pattern=%s/video_level/train*.tfrecord" % data_dir,
      "--train_dir=" + train_dir, "--model=" + model, "--feature_names=mean_rgb,mean_audio",
      "--feature_sizes=1024,128", "--num_classes=%d" % NUM_CLASSES, "--batch_size=32",
      "--max_steps=20", "--base_learning_rate=0.01", "--export_model_steps=0"])
  assert result.returncode == 0, result.stderr[-2000:]
  trained, config, path = configuration.load_trained_model(train_dir, -1, models.ModelConfig(),
                                                           [])
  assert path.endswith("model.ckpt-20") and config.model == model
  assert not config.frame_features
  pattern = os.path.join(data_dir, "video_level", "validate*.tfrecord")
  gaps = [evaluation.evaluate(m, config, pattern, 64, 2, top_k=20)["gap"]
          for m in (trained, models.build_model(config))]
  # Measured: 0.70 and 0.61 trained against 0.20 and 0.21 untrained (chance).
  assert gaps[0] > 0.4 and gaps[0] > gaps[1] + 0.25, gaps


def one_line_error(result):
  lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
  assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
  return lines[0]


def test_clear_errors_and_no_partial_outputs(data_dir, tmp_path):
  output = str(tmp_path / "never.csv")
  missing = str(tmp_path / "missing")
  error = one_line_error(run_script("inference.py", [
      "--train_dir=" + missing, "--output_file=" + output,
      "--input_data_pattern=%s/test*.tfrecord" % data_dir]))
  assert missing in error and not os.path.exists(output)
  error = one_line_error(run_script("train.py", [
      "--train_data_pattern=%s/nothing*.tfrecord" % data_dir, "--train_dir=" + missing]))
  assert "nothing*.tfrecord" in error
  error = one_line_error(run_script("train.py", [
      "--train_data_pattern=%s/train*.tfrecord" % data_dir, "--model=NoSuchModel"]))
  assert "NoSuchModel" in error and "NetVLADModelLF" in error
  error = one_line_error(run_script("train.py", [
      "--train_data_pattern=%s/train*.tfrecord" % data_dir, "--feature_names=rgb,audio",
      "--feature_sizes=1024"]))
  assert "feature_sizes" in error
  result = run_script("train.py", ["--no_such_flag=3"])
  assert result.returncode != 0 and "no_such_flag" in result.stderr


# What TensorFlow prints while it loads, before it reads TF_CPP_MIN_LOG_LEVEL (docs/flags.md).
BEFORE_TENSORFLOW_READS_ITS_LEVEL = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"I0000 [\d:. ]+port\.cc:\d+\] oneDNN custom operations are on\. .*")


def test_tensorflows_own_log_lines_show_only_with_verbose(trained_dir, data_dir):
  """Quiet by default: the script's lines and the few TensorFlow prints before it reads its log
  level; --verbose shows TensorFlow's banners (CPU features) and its Python INFO lines."""
  ours = {name[:-3] for name in os.listdir(ROOT) + os.listdir(os.path.join(ROOT, "willow"))
          if name.endswith(".py")}
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = ROOT
  logs = []
  for verbose in ([], ["--verbose"]):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "eval.py"), "--train_dir=" + trained_dir[0],
         "--eval_data_pattern=%s/validate*.tfrecord" % data_dir, "--run_once",
         "--batch_size=64"] + verbose, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    logs.append(result.stderr.splitlines())
  quiet, verbose = logs
  foreign = [line for line in quiet
             if not re.match(r"[IWE]\d{4} [\d:. ]+ \d+ (%s)\.py:\d+\] " % "|".join(ours), line)
             and not any(re.fullmatch(p, line) for p in BEFORE_TENSORFLOW_READS_ITS_LEVEL)]
  assert foreign == [] and any("GAP:" in line for line in quiet), quiet
  assert any("cpu_feature_guard" in line for line in verbose), verbose
  assert len(verbose) > len(quiet)


def scalars_of(events_file):
  """{tag: {step: value}} of a TensorBoard events file."""
  found = {}
  for record in tf.data.TFRecordDataset(events_file):
    event = tf.compat.v1.Event.FromString(record.numpy())
    for value in event.summary.value:
      found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor).item()
  return found


def test_evaluation_while_training_reports_what_eval_py_reports_for_the_checkpoint(
    data_dir, tmp_path):
  """train.py --eval_data_pattern evaluates every 4 steps and at the end (step 6, a
  checkpoint): its scalars in <train_dir>/validation equal eval.py's for that checkpoint,
  computed with the batch-norm statistics re-estimated for it."""
  train_dir = str(tmp_path / "train")
  pattern = "%s/validate*.tfrecord" % data_dir
  result = run_script("train.py", SMALL_NETVLAD + [
      "--train_data_pattern=%s/train*.tfrecord" % data_dir, "--train_dir=" + train_dir,
      "--batch_size=16", "--max_steps=6", "--bn_calibration_batches=3", "--seed=3",
      "--export_model_steps=0", "--eval_data_pattern=" + pattern, "--eval_every_n_steps=4"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert [line.split("] ")[1].split(" |")[0] for line in result.stderr.splitlines()
          if "epoch/eval number" in line] == ["epoch/eval number 4", "epoch/eval number 6"]
  assert "examples_processed" not in result.stderr  # one line an evaluation
  training_events = os.listdir(os.path.join(train_dir, "train"))
  assert "model/Training_GAP" in scalars_of(os.path.join(train_dir, "train",
                                                         training_events[0]))
  [while_training] = os.listdir(os.path.join(train_dir, "validation"))
  during = scalars_of(os.path.join(train_dir, "validation", while_training))
  assert sorted(during["Epoch/Eval_GAP"]) == [4, 6]
  result = run_script("eval.py", [
      "--train_dir=" + train_dir, "--eval_data_pattern=" + pattern, "--run_once",
      "--batch_size=16", "--inference_precision=float32"])
  assert result.returncode == 0, result.stderr[-3000:]
  [by_eval_py] = set(os.listdir(os.path.join(train_dir, "validation"))) - {while_training}
  after = scalars_of(os.path.join(train_dir, "validation", by_eval_py))
  for tag in ("Epoch/Eval_GAP", "Epoch/Eval_MAP", "Epoch/Eval_Avg_Hit@1", "Epoch/Eval_Avg_Loss"):
    assert after[tag] == {6: during[tag][6]}, tag
  assert 0 < during["Epoch/Eval_GAP"][6] < 1
  assert sorted(os.listdir(train_dir)) == ["checkpoint", "model.ckpt-6.data-00000-of-00001",
                                           "model.ckpt-6.index", "model_config.json", "train",
                                           "train_flags.txt", "validation"]


def test_eval_on_a_missing_train_dir_is_an_error_and_creates_nothing(data_dir, tmp_path):
  """Without --run_once, eval.py used to create the directory and wait for a checkpoint."""
  missing = str(tmp_path / "mistyped")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "eval.py"), "--train_dir=" + missing,
       "--eval_data_pattern=%s/validate*.tfrecord" % data_dir],
      capture_output=True, text=True, env=env, timeout=120)
  error = one_line_error(result)
  assert result.returncode == 1 and missing in error and "does not exist" in error
  assert os.listdir(tmp_path) == []


FULL_SIZE = pytest.param(
    "full", marks=pytest.mark.skipif(
        not os.environ.get("WILLOW_FULL_SIZE_TESTS"),
        reason="full-size README runs take ~9 min on 2 cores, over the suite's budget; set "
               "WILLOW_FULL_SIZE_TESTS=1"))


@pytest.mark.slow
@pytest.mark.parametrize("size", ["scaled", FULL_SIZE])
@pytest.mark.parametrize("willow", readme_configs.WILLOW_CONFIGS, ids=lambda c: c.key)
def test_readme_command_lines_run_unchanged(willow, size, tmp_path_factory):
  """Each README training line and inference line, as printed (only $path_to_features
  filled in), runs. Training gets flags appended after the line: --max_step=2 and, unless
  full size, the demo's smaller cluster/hidden sizes and 100 classes (at the README batch
  size, without the XLA compile that would dominate two steps). The
  inference line is run as printed: the saved configuration decides the model."""
  features = str(tmp_path_factory.mktemp("readme_features"))
  full = size == "full"
  frames, classes = ((250, 320), 4716) if full else ((20, 60), 100)
  # 20 videos x the default 15 epochs cover two steps of the README's batches of 128.
  for partition, count, labels in [("train", 20, True), ("test", 6, False)]:
    make_synthetic_data.generate_partition(features, partition, num_videos=count, num_shards=1,
                                           num_classes=classes, seed=0, with_labels=labels,
                                           min_frames=frames[0], max_frames_gen=frames[1])
  cwd = str(tmp_path_factory.mktemp("readme_run"))
  smaller = [] if full else [
      "--%s=%s" % (name, value) for name, value in readme_configs.DEMO_SCALE[willow.key].items()
      if name != "batch_size"] + ["--num_classes=%d" % classes, "--jit_compile=false"]
  train = readme_configs.command_args(willow.train_command, features)
  result = run_script("train.py", train + smaller + [
      "--max_step=2", "--bn_calibration_batches=1", "--export_model_steps=0"], cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "training finished at step 2" in result.stderr, result.stderr[-3000:]
  assert os.path.exists(os.path.join(cwd, willow.train_dir, "model.ckpt-2.index"))
  inference_args = readme_configs.command_args(willow.inference_command, features)
  if willow.key == "gated_dbof":  # the README's inference line names another train_dir
    os.symlink(os.path.join(cwd, willow.train_dir),
               os.path.join(cwd, readme_configs.flag_value(inference_args, "train_dir")))
  result = run_script("inference.py", inference_args, cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = read_csv(os.path.join(cwd, willow.inference_output))
  top_k = int(readme_configs.flag_value(inference_args, "top_k"))  # the README's 50
  check_submission(lines, record_ids(os.path.join(features, "test*.tfrecord")), top_k, classes)


def test_eval_restores_each_new_checkpoint_into_one_model(trained_dir, data_dir, tmp_path):
  """Watching a train_dir (no --run_once), eval.py evaluates every new checkpoint with the
  model it built for the first: the second GAP must be that of a fresh load of the second."""
  train_dir, _ = trained_dir
  watched = str(tmp_path / "watched")
  os.makedirs(watched)
  shutil.copy(os.path.join(train_dir, "model_config.json"), watched)
  trained, config, first = configuration.load_trained_model(train_dir, -1,
                                                               models.ModelConfig(), [])
  for name in tf.io.gfile.glob(first + ".*"):
    shutil.copy(name, watched)
  untrained = models.build_model(config)  # the "newer" checkpoint: different weights
  untrained(tf.zeros([1, 4, config.input_size]), tf.constant([4]), training=False)
  pattern = os.path.join(data_dir, "validate*.tfrecord")

  class StopWatching(Exception):
    pass

  def add_second_checkpoint(unused_seconds):
    if tf.io.gfile.glob(os.path.join(watched, "model.ckpt-999.*")):
      raise StopWatching()
    tf.train.Checkpoint(model=untrained).write(os.path.join(watched, "model.ckpt-999"))
  found = eval_script.new_checkpoints(watched, interval_secs=7, sleep=add_second_checkpoint)
  config = configuration.config_to_restore(watched, models.ModelConfig(), [])
  model = checkpoints.build_model_to_restore(config)
  predict = evaluation.prediction_function(model)
  gaps = []
  try:
    for path in found:
      checkpoints.restore_trained_weights(model, config, path)
      gaps.append((checkpoints.checkpoint_step(path),
                   evaluation.evaluate(model, config, pattern, 64, 2, top_k=20,
                                       predict=predict)["gap"]))
  except StopWatching:
    pass
  fresh, _, _ = configuration.load_trained_model(watched, 999, models.ModelConfig(), [])
  expected = [evaluation.evaluate(m, config, pattern, 64, 2, top_k=20)["gap"]
              for m in (trained, fresh)]
  assert [step for step, _ in gaps] == [150, 999]
  assert [gap for _, gap in gaps] == pytest.approx(expected, abs=1e-9)
  assert expected[0] > expected[1] + 0.3  # the two checkpoints really differ


def test_float32_inference_compiles_with_xla_and_matches_the_plain_pass(trained_dir, data_dir,
                                                                        tmp_path):
  """--inference_precision=float32 turns XLA on (--jit_compile=auto); the CSV must list the
  same videos and, up to float32 rounding, the same scores as the plain float32 pass."""
  train_dir, _ = trained_dir
  outputs, logs = {}, {}
  for jit in ("auto", "false"):
    output = str(tmp_path / ("%s.csv" % jit))
    result = run_script("inference.py", [
        "--train_dir=" + train_dir, "--output_file=" + output, "--top_k=4",
        "--input_data_pattern=%s/test*.tfrecord" % data_dir, "--batch_size=32",
        "--inference_precision=float32", "--jit_compile=" + jit])
    assert result.returncode == 0, result.stderr[-2000:]
    outputs[jit], logs[jit] = read_csv(output), result.stderr
  assert "forward pass with XLA" in logs["auto"]
  assert "forward pass without XLA" in logs["false"]
  assert len(outputs["auto"]) == len(outputs["false"]) == 71  # 70 videos: a partial last batch
  for xla_line, plain_line in zip(outputs["auto"][1:], outputs["false"][1:]):
    xla_id, xla_pairs = xla_line.split(",")
    plain_id, plain_pairs = plain_line.split(",")
    assert xla_id == plain_id
    xla_scores = dict(zip(xla_pairs.split()[0::2], map(float, xla_pairs.split()[1::2])))
    plain_scores = dict(zip(plain_pairs.split()[0::2], map(float, plain_pairs.split()[1::2])))
    for label in set(xla_scores) & set(plain_scores):
      assert abs(xla_scores[label] - plain_scores[label]) <= 2e-5
    assert len(set(xla_scores) & set(plain_scores)) >= 3  # at most a tie swaps the 4th label


def test_jit_compile_flag_is_checked():
  assert inference.inference_uses_xla("auto", "float32")
  assert not inference.inference_uses_xla("auto", "float64")
  assert inference.inference_uses_xla("True", "float64")
  assert not inference.inference_uses_xla("false", "float32")
  # auto leaves out models whose hidden layer contracts >= LONG_CONTRACTION inputs.
  def with_hidden(inputs):
    return types.SimpleNamespace(hidden=types.SimpleNamespace(weights=np.zeros((inputs, 1))))
  assert not inference.inference_uses_xla("auto", "float32", with_hidden(utils.LONG_CONTRACTION))
  assert inference.inference_uses_xla("auto", "float32", with_hidden(4608))
  assert inference.inference_uses_xla("true", "float32", with_hidden(278528))
  with pytest.raises(utils.InputError, match="--jit_compile must be auto, true or false"):
    inference.inference_uses_xla("yes", "float32")
