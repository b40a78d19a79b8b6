"""Training on several replicas and workers (tf.distribute) and inference in several parts.

Two set-ups run in subprocesses so that this pytest process keeps one CPU device and no
cluster: MirroredStrategy over two logical CPU devices (this file run as a script), and
MultiWorkerMirroredStrategy with two train.py workers on 127.0.0.1 (TF_CONFIG, free ports).
Both are compared with the default strategy on the same global batch.

Exact comparisons need the same examples in every step's global batch and the same batch
statistics. Mirrored: a video-level MoE without batch norm, the two replicas' batches of 4
are the default run's batch of 8. Multi-worker: every step is the whole data set (full-batch
training); each worker's file holds the same 4 videos and the single-process file holds them
twice, so batch norm (per replica, as the original's per-tower batch norm) sees the same
statistics as on one device.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script
  sys.path.insert(0, ROOT)

# Importing these runs no TensorFlow op: the script can still split the CPU device.
import inference
import make_synthetic_data
import readers
from willow import checkpoints
from willow import configuration
from willow import distribution
from willow import model_blocks
from willow import models
from willow import training

NUM_CLASSES = 6
VIDEO_FEATURES = dict(feature_names=("mean_rgb", "mean_audio"), feature_sizes=(1024, 128),
                      frame_features=False, num_classes=NUM_CLASSES)
PROCESS_TIMEOUT = 300  # seconds; a hung collective must not hang the test suite


def quiet_env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def communicate_or_kill(processes, timeout=PROCESS_TIMEOUT):
  """Waits for every process; kills them all on a timeout or any exception."""
  deadline = time.time() + timeout
  try:
    for process in processes:
      process.wait(timeout=max(deadline - time.time(), 1))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()


def read(path):
  with open(path) as f:
    return f.read()


# ----------------------------------------------------------------------------------------
# Strategy choice, names and task splits (in-process).

def test_strategy_names_replicas_and_workers_of_the_default_strategy(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  strategy = distribution.choose_strategy("default")
  assert distribution.strategy_class_name(strategy) == "_DefaultDistributionStrategy"
  assert strategy.num_replicas_in_sync == 1
  assert distribution.num_workers(strategy) == 1 and distribution.is_chief(strategy)
  assert distribution.strategy_class_name(distribution.choose_strategy("auto")) == (
      "_DefaultDistributionStrategy")  # no TF_CONFIG, no GPU
  with pytest.raises(ValueError, match="--distribution_strategy must be"):
    distribution.choose_strategy("parameter_server")


def test_the_originals_tf_config_with_master_and_ps_is_a_clear_error(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", json.dumps({
      "cluster": {"master": ["a:1"], "worker": ["b:1"], "ps": ["c:1"]},
      "task": {"type": "master", "index": 0}}))
  with pytest.raises(ValueError, match='master/ps tasks: use "chief"'):
    distribution.choose_strategy("auto")


@pytest.mark.parametrize("tf_config, expected", [
    (None, (0, 1)),
    ({"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}},
     (2, 3)),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
      "task": {"type": "chief", "index": 0}}, (0, 3)),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
      "task": {"type": "worker", "index": 1}}, (2, 3)),
    ({"cluster": {"worker": ["a:1", "b:1"], "evaluator": ["c:1"]},
      "task": {"type": "evaluator", "index": 0}}, (0, 1)),
])
def test_inference_task_split_from_tf_config(monkeypatch, tf_config, expected):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  if tf_config is not None:
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
  assert inference.task_split(None, None) == expected
  assert inference.task_split(1, 4) == (1, 4)  # the flags win over TF_CONFIG
  with pytest.raises(ValueError, match="outside"):
    inference.task_split(4, 4)


class FakeResolver:
  """What stopped_peer reads of a MultiWorkerMirroredStrategy's cluster resolver."""

  def __init__(self, jobs, task_type, task_id):
    self.jobs, self.task_type, self.task_id = jobs, task_type, task_id

  def cluster_spec(self):
    return tf.train.ClusterSpec(self.jobs)


class FakeStrategy:
  def __init__(self, jobs, task_type, task_id):
    self.cluster_resolver = FakeResolver(jobs, task_type, task_id)


# The two ways TensorFlow 2.21 reported a killed worker here (shortened).
HEARTBEATS = ("Collective ops is aborted by: The following tasks are unhealthy (stopped sending "
              "heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed. Check the "
              "task logs for an earlier error to debug further.")
UNREACHABLE = ("Collective ops is aborted by: failed to connect to all addresses; last error: "
               "UNKNOWN: ipv4:127.0.0.1:2: Failed to connect to remote host: Connection refused"
               "\nAdditional GRPC error information from remote target /job:worker/replica:0/"
               "task:1 while calling /tensorflow.WorkerService/RecvBuf:")


def test_a_stopped_peer_is_named_and_a_data_error_is_not_taken_for_one():
  jobs = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
  chief, worker = FakeStrategy(jobs, "worker", 0), FakeStrategy(jobs, "worker", 1)
  for error in (tf.errors.AbortedError(None, None, HEARTBEATS),
                tf.errors.UnavailableError(None, None, UNREACHABLE)):
    assert distribution.stopped_peer(error, chief) == "worker 1 (127.0.0.1:2)"
  leader_gone = tf.errors.UnavailableError(None, None, (
      "Failed to send RPC to coordination service. Either the leader task was preempted/died/"
      "restarted unexpectedly ... from remote target /job:worker/replica:0/task:0 while calling "
      "/tensorflow.CoordinationService/Heartbeat"))
  assert distribution.stopped_peer(leader_gone, worker) == "worker 0 (127.0.0.1:1)"
  assert distribution.stopped_peer(tf.errors.UnavailableError(
      None, None, "Collective ops is aborted by: Socket closed"), chief) == "another worker"
  own_data = tf.errors.InvalidArgumentError(None, None, (
      "Name: a.tfrecord, Key: labels, ... [[{{node ParseExample}}]] on /job:worker/replica:0/"
      "task:0/device:CPU:0"))
  remote_file = tf.errors.UnavailableError(None, None, "Error executing an HTTP request: "
                                           "Connection reset by peer, reading gs://b/a.tfrecord")
  for error in (own_data, remote_file):
    assert distribution.stopped_peer(error, chief) is None
  one_worker = FakeStrategy({"worker": ["127.0.0.1:1"]}, "worker", 0)
  assert distribution.stopped_peer(tf.errors.AbortedError(None, None, HEARTBEATS),
                                   one_worker) is None


# ----------------------------------------------------------------------------------------
# Data.

def write_video_level(directory, partition, num_videos, num_shards, seed):
  make_synthetic_data.generate_partition(
      directory, partition, num_videos=num_videos, num_shards=num_shards,
      num_classes=NUM_CLASSES, seed=seed, frame_level=False, video_level=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """train*: 48 video-level records in 2 files; test*: 18 in 2 files; frames/train*: 32
  frame-level ones of 5 frames (a model sampling 5 frames in training then sees all of them
  in order: its batch statistics do not depend on random sampling)."""
  directory = str(tmp_path_factory.mktemp("distribution_data"))
  write_video_level(directory, "train", 48, 2, seed=0)
  write_video_level(directory, "test", 18, 2, seed=2)
  make_synthetic_data.generate_partition(
      os.path.join(directory, "frames"), "train", num_videos=32, num_shards=2,
      num_classes=NUM_CLASSES, seed=1, min_frames=5, max_frames_gen=5)
  return directory


# ----------------------------------------------------------------------------------------
# A non-chief worker (in-process, default strategy, is_chief patched).

def test_a_non_chief_resumes_from_the_chiefs_checkpoint_and_writes_only_scratch(
    tmp_path, data_dir, monkeypatch):
  config = models.ModelConfig(model="LogisticModel", **VIDEO_FEATURES)
  train_dir = str(tmp_path / "train")
  options = lambda steps: training.TrainOptions(
      train_dir=train_dir, data_pattern=os.path.join(data_dir, "train*.tfrecord"),
      batch_size=8, num_readers=2, max_steps=steps, export_model_steps=0, seed=1,
      save_checkpoint_steps=1)
  training.Trainer(config, options(2), tf.distribute.get_strategy()).run()
  before = sorted(os.listdir(train_dir))
  monkeypatch.setattr(distribution, "is_chief", lambda strategy: False)
  worker = training.Trainer(config, options(4), tf.distribute.get_strategy())
  scratch = worker.checkpoint_dir
  assert scratch != train_dir and os.path.isdir(scratch)
  worker.restore_or_initialize()
  assert worker.step == 2
  worker.run()
  assert worker.step == 4
  assert not os.path.exists(scratch)
  assert sorted(os.listdir(train_dir)) == before  # the chief's files only, untouched


# ----------------------------------------------------------------------------------------
# MirroredStrategy over two logical CPU devices (this file as a script in a subprocess).

def mirrored_main(data_dir, work_dir, output_json):
  """Runs in the subprocess; writes the measurements as JSON."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  moe = models.ModelConfig(model="MoeModel", moe_prob_gating=False, **VIDEO_FEATURES)
  netvlad = models.ModelConfig(
      model="NetVLADModelLF", feature_names=("rgb", "audio"), feature_sizes=(1024, 128),
      frame_features=True, num_classes=NUM_CLASSES, iterations=5, sample_random_frames=False,
      netvlad_cluster_size=4, netvlad_hidden_size=8, gating=True, moe_prob_gating=True)
  results = dict(mirrored_name=distribution.strategy_class_name(mirrored),
                 mirrored_replicas=mirrored.num_replicas_in_sync,
                 mirrored_workers=distribution.num_workers(mirrored),
                 bn=batch_norm_statistics_under(mirrored, netvlad, data_dir, work_dir),
                 uneven=one_step_on_uneven_replicas(moe, [3, 5], data_dir, work_dir, mirrored),
                 empty=one_step_on_uneven_replicas(netvlad, [4, 0], data_dir, work_dir,
                                                   mirrored))
  # The same trajectory: default strategy, batch 8 vs 2 replicas x batch 4 (plain SGD: a
  # wrong gradient scale would show; the learning rate halves every 16 global examples).
  initial = None
  for name, strategy, batch_size in [("default", tf.distribute.get_strategy(), 8),
                                     ("mirrored", mirrored, 4)]:
    results[name], initial = trajectory(moe, strategy, batch_size, initial, data_dir,
                                        os.path.join(work_dir, name))
  with open(output_json, "w") as f:
    json.dump(results, f)


def trajectory(config, strategy, batch_size, initial, data_dir, train_dir, steps=5):
  """Losses of `steps` SGD steps from the weights `initial` (None: the model's own)."""
  options = training.TrainOptions(
      train_dir=train_dir, batch_size=batch_size, num_readers=2, seed=5,
      data_pattern=os.path.join(data_dir, "train*.tfrecord"),
      optimizer="GradientDescentOptimizer", base_learning_rate=4.0, learning_rate_decay=0.5,
      learning_rate_decay_examples=16, clip_gradient_norm=0.5, export_model_steps=0)
  trainer = training.Trainer(config, options, strategy)
  variables = trainer.model.trainable_variables
  initial = initial or [v.numpy() for v in variables]
  with strategy.scope():
    for variable, value in zip(variables, initial):
      variable.assign(value)
  losses, batch_shapes = [], None
  for batch in trainer.distributed_dataset():
    if batch_shapes is None:
      batch_shapes = [list(t.shape) for t in strategy.experimental_local_results(batch["labels"])]
    losses.append(float(trainer.train_step(batch)["label_loss"]))
    if len(losses) == steps:
      break
  return dict(losses=losses, batch_shapes=batch_shapes,
              learning_rate=float(trainer.optimizer.learning_rate),
              weights=[v.numpy().tolist() for v in variables]), initial


def batch_norm_statistics_under(mirrored, config, data_dir, work_dir):
  """Moving statistics (ON_READ variables: one copy per replica) through training, precise
  BN, save and restore under MirroredStrategy, against the same calibration on one device."""
  options = training.TrainOptions(
      train_dir=os.path.join(work_dir, "bn"), batch_size=4, num_readers=2, seed=3,
      data_pattern=os.path.join(data_dir, "frames", "train*.tfrecord"), max_steps=3,
      bn_calibration_batches=3, export_model_steps=0)
  trainer = training.Trainer(config, options, mirrored)
  trainer.restore_or_initialize()
  for _, batch in zip(range(3), trainer.distributed_dataset()):
    trainer.train_step(batch)
  copies = lambda v: [c.numpy() for c in mirrored.experimental_local_results(v)]
  trained = copies(trainer.model.input_norm.moving_mean)
  path = trainer.save("test")
  calibrated = copies(trainer.model.input_norm.moving_mean)
  plain = models.build_model(config)
  checkpoints.restore_weights(plain, path)
  saved = plain.input_norm.moving_mean.numpy()
  training.calibrate_batch_norm(plain, trainer.calibration_batches(), 3)
  resumed = training.Trainer(config, options, mirrored)
  resumed.restore_or_initialize()
  max_difference = lambda a, b: float(np.abs(a - b).max())
  return dict(
      trained_copies_differ=max_difference(*trained),
      calibrated_copies_differ=max_difference(*calibrated),
      changed_by_calibration=max_difference(saved, trained[0]),
      saved_vs_copy=max_difference(saved, calibrated[0]),
      saved_vs_one_device=max_difference(saved, plain.input_norm.moving_mean.numpy()),
      restored_vs_saved=max(max_difference(c, saved)
                            for c in copies(resumed.model.input_norm.moving_mean)),
      resumed_step=resumed.step)


def one_step_on_uneven_replicas(config, sizes, data_dir, work_dir, mirrored):
  """One SGD step with replica batches of `sizes` against one device on all of them."""
  pattern = os.path.join(data_dir, "frames" if config.frame_features else "", "train*.tfrecord")
  batch = next(iter(readers.get_input_dataset(readers.reader_for(config), pattern, sum(sizes),
                                              num_readers=1, shuffle=False)))
  batch = {k: v for k, v in batch.items() if k in ("video_matrix", "num_frames", "labels")}
  bounds = np.cumsum([0] + sizes)
  pieces = [{k: v[start:end] for k, v in batch.items()}
            for start, end in zip(bounds[:-1], bounds[1:])]
  outcome, initial = {}, None
  for name, strategy in [("default", tf.distribute.get_strategy()), ("mirrored", mirrored)]:
    options = training.TrainOptions(train_dir=os.path.join(work_dir, "unused"),
                                    data_pattern=pattern, batch_size=4,
                                    optimizer="GradientDescentOptimizer",
                                    base_learning_rate=1.0, export_model_steps=0, seed=1)
    trainer = training.Trainer(config, options, strategy)
    if initial is None:
      initial = [v.numpy() for v in trainer.model.variables]
      initial_trainable = [v.numpy() for v in trainer.model.trainable_variables]
    with strategy.scope():
      for variable, value in zip(trainer.model.variables, initial):
        variable.assign(value)
    if name == "mirrored":
      batch = strategy.experimental_distribute_values_from_function(
          lambda context: pieces[context.replica_id_in_sync_group])
    loss = float(trainer.train_step(batch)["total_loss"])
    moving = [mirrored.experimental_local_results(m.moving_mean)[0].numpy()
              for m in trainer.model.submodules if isinstance(m, model_blocks.BatchNorm)]
    outcome[name] = dict(loss=loss, moving=moving,
                         trainable=[v.numpy() for v in trainer.model.trainable_variables])
  default, mirrored_outcome = outcome["default"], outcome["mirrored"]
  return dict(
      loss=[default["loss"], mirrored_outcome["loss"]],
      weights_differ=max(float(np.abs(a - b).max()) for a, b in
                         zip(default["trainable"], mirrored_outcome["trainable"])),
      weights_changed=max(float(np.abs(a - b).max()) for a, b in
                          zip(default["trainable"], initial_trainable)),
      batch_norm_layers=len(default["moving"]),
      moving_differ=max([float(np.abs(a - b).max()) for a, b in
                         zip(default["moving"], mirrored_outcome["moving"])] or [0.0]),
      moving_finite=all(bool(np.isfinite(m).all()) for m in mirrored_outcome["moving"]))


@pytest.fixture(scope="module")
def mirrored_results(data_dir, tmp_path_factory):
  work_dir = str(tmp_path_factory.mktemp("mirrored"))
  output = os.path.join(work_dir, "results.json")
  with open(os.path.join(work_dir, "log"), "w") as log:
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "mirrored", data_dir, work_dir, output],
        stdout=log, stderr=subprocess.STDOUT, env=quiet_env(), cwd=ROOT)
    communicate_or_kill([process])
  assert process.returncode == 0, read(os.path.join(work_dir, "log"))[-3000:]
  return json.loads(read(output))


def test_mirrored_two_replicas_follow_the_default_strategys_loss_trajectory(mirrored_results):
  default, mirrored = mirrored_results["default"], mirrored_results["mirrored"]
  assert (mirrored_results["mirrored_name"], mirrored_results["mirrored_replicas"],
          mirrored_results["mirrored_workers"]) == ("MirroredStrategy", 2, 1)
  assert default["batch_shapes"] == [[8, NUM_CLASSES]]
  assert mirrored["batch_shapes"] == [[4, NUM_CLASSES]] * 2  # --batch_size is per replica
  assert len(default["losses"]) == 5 and len(set(default["losses"])) == 5
  np.testing.assert_allclose(mirrored["losses"], default["losses"], rtol=1e-5)
  for got, want in zip(mirrored["weights"], default["weights"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # 5 steps x 8 global examples = 40: two halvings at 16 and 32 examples in both runs.
  assert mirrored["learning_rate"] == pytest.approx(1.0)
  assert default["learning_rate"] == pytest.approx(1.0)


def test_replicas_with_unequal_or_empty_batches_make_the_one_device_step(mirrored_results):
  """The loss is averaged over the global batch whatever each replica holds; a replica
  with an empty batch (its worker's data has run out) adds nothing and no NaN."""
  uneven, empty = mirrored_results["uneven"], mirrored_results["empty"]
  for case in (uneven, empty):
    assert np.isfinite(case["loss"]).all()
    assert case["loss"][1] == pytest.approx(case["loss"][0], rel=1e-5)
    assert case["weights_changed"] > 1e-3 and case["weights_differ"] < 1e-5
  assert empty["batch_norm_layers"] >= 3 and empty["moving_finite"]
  assert empty["moving_differ"] < 1e-6  # replica 0 saw the whole batch, as one device


def test_mirrored_batch_norm_statistics_calibrate_save_and_restore(mirrored_results):
  bn = mirrored_results["bn"]
  assert bn["trained_copies_differ"] > 0  # each replica moved its own copy during training
  assert bn["changed_by_calibration"] > 1e-4
  assert bn["calibrated_copies_differ"] == 0  # precise BN wrote every replica's copy
  assert bn["saved_vs_copy"] < 1e-7
  assert bn["saved_vs_one_device"] < 1e-5
  assert bn["restored_vs_saved"] == 0 and bn["resumed_step"] == 3


# ----------------------------------------------------------------------------------------
# MultiWorkerMirroredStrategy: two train.py workers on 127.0.0.1.

def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


TRAIN_FLAGS = ["--model=MoeModel", "--feature_names=mean_rgb,mean_audio",
               "--feature_sizes=1024,128", "--frame_features=False", "--moe_prob_gating=True",
               "--num_classes=%d" % NUM_CLASSES, "--optimizer=MomentumOptimizer",
               "--base_learning_rate=0.5", "--learning_rate_decay=0.5",
               "--learning_rate_decay_examples=16", "--bn_calibration_batches=2",
               "--log_steps=1", "--seed=7", "--num_readers=2"]


def run_two_workers(work_dir, phase, data_pattern, train_dir, max_steps, worker_flags):
  """Runs train.py as worker 0 (the chief) and worker 1; returns their logs."""
  ports = free_ports(2)
  cluster = {"worker": ["127.0.0.1:%d" % p for p in ports]}
  processes, logs = [], []
  try:
    for index in range(2):
      scratch = os.path.join(work_dir, "tmp%d" % index)
      os.makedirs(scratch, exist_ok=True)
      logs.append(os.path.join(work_dir, "%s_worker%d.log" % (phase, index)))
      env = quiet_env(TMPDIR=scratch, TF_CONFIG=json.dumps(
          {"cluster": cluster, "task": {"type": "worker", "index": index}}))
      with open(logs[-1], "w") as log:
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train.py"), "--train_dir=" + train_dir,
             "--train_data_pattern=" + data_pattern, "--batch_size=4",
             "--max_steps=%d" % max_steps] + TRAIN_FLAGS + worker_flags[index],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work_dir))
  finally:
    communicate_or_kill(processes)
  texts = [read(log) for log in logs]
  for process, text in zip(processes, texts):
    assert process.returncode == 0, text[-3000:]
  return texts


@pytest.fixture(scope="module")
def multi_worker(tmp_path_factory):
  """Full-batch training: 2 workers x 4 videos (the same 4) against one process with the
  8-record file (the 4 twice) and --batch_size=8. Worker 1 asks for a checkpoint every 2
  steps, the chief only every 100: they must agree. Then both restart and continue."""
  work_dir = str(tmp_path_factory.mktemp("multi_worker"))
  source = os.path.join(work_dir, "source")
  write_video_level(source, "train", 4, 1, seed=4)
  record_file = os.path.join(source, "train0000.tfrecord")
  for index in range(2):
    os.makedirs(os.path.join(work_dir, "shared"), exist_ok=True)
    shutil.copy(record_file, os.path.join(work_dir, "shared", "train%04d.tfrecord" % index))
  os.makedirs(os.path.join(work_dir, "single"))
  with open(os.path.join(work_dir, "single", "train0000.tfrecord"), "wb") as f:
    f.write(open(record_file, "rb").read() * 2)  # TFRecord files concatenate

  train_dir = os.path.join(work_dir, "train")
  single_dir = os.path.join(work_dir, "train_single")
  single = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "train.py"), "--train_dir=" + single_dir,
       "--train_data_pattern=" + os.path.join(work_dir, "single", "*.tfrecord"),
       "--batch_size=8", "--max_steps=6", "--export_model_steps=0"] + TRAIN_FLAGS,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=quiet_env(),
      cwd=work_dir)
  try:
    pattern = os.path.join(work_dir, "shared", "*.tfrecord")
    first = run_two_workers(work_dir, "first", pattern, train_dir, 3, [
        ["--save_checkpoint_steps=100", "--export_model_steps=2"],
        ["--save_checkpoint_steps=2", "--export_model_steps=2"]])
    files_after_first = sorted(os.listdir(train_dir))
    train_events_after_first = os.listdir(os.path.join(train_dir, "train"))
    second = run_two_workers(work_dir, "second", pattern, train_dir, 6, [
        ["--export_model_steps=0"], ["--export_model_steps=0"]])
    single_log, _ = single.communicate(timeout=PROCESS_TIMEOUT)
  finally:
    if single.poll() is None:
      single.kill()
      single.wait()
  assert single.returncode == 0, single_log[-3000:]
  return dict(work_dir=work_dir, train_dir=train_dir, single_dir=single_dir, first=first,
              second=second, single_log=single_log, files_after_first=files_after_first,
              train_events_after_first=train_events_after_first)


def logged_losses(log):
  return [float(line.split("| loss ")[1].split(" ")[0]) for line in log.splitlines()
          if "| loss " in line]


def test_two_workers_log_their_strategy_and_agree_on_checkpoints(multi_worker):
  chief, worker = multi_worker["first"]
  line = "distribution strategy MultiWorkerMirroredStrategy: 2 replica(s) on 2 worker(s)"
  assert line in chief and line in worker
  # Worker 1 wanted a checkpoint at step 2, the chief did not: both saved (a save is a
  # collective op, so a save on one worker only would hang or break the run).
  assert "saved %s/model.ckpt-2 (periodic" % multi_worker["train_dir"] in chief
  assert "saved worker checkpoint (periodic" in worker
  assert "saved worker checkpoint (--max_steps=3 reached" in worker


def test_only_the_chief_writes_to_train_dir_and_the_scratch_dirs_are_removed(multi_worker):
  files = multi_worker["files_after_first"]
  assert "train" in files and "validation" not in files  # TensorBoard's run of training
  assert len([f for f in multi_worker["train_events_after_first"]
              if f.startswith("events.out")]) == 1
  assert {f for f in files if f.startswith("model.ckpt")} == {
      "model.ckpt-%d.%s" % (step, suffix) for step in (2, 3)
      for suffix in ("index", "data-00000-of-00001")}
  assert "model_config.json" in files and "checkpoint" in files
  assert sorted(os.listdir(os.path.join(multi_worker["train_dir"], "export"))) == ["step_2",
                                                                                   "step_3"]
  for index in range(2):  # TMPDIR of each worker: the scratch directory is gone
    assert os.listdir(os.path.join(multi_worker["work_dir"], "tmp%d" % index)) == []


def test_restarted_workers_resume_from_the_chiefs_latest_checkpoint(multi_worker):
  for log in multi_worker["second"]:
    assert "resumed from %s/model.ckpt-3 (step 3" % multi_worker["train_dir"] in log
    assert "training finished at step 6" in log
  assert logged_losses(multi_worker["second"][0]) == logged_losses(
      multi_worker["second"][1])


def test_two_workers_match_one_process_on_the_same_global_batch(multi_worker):
  losses = (logged_losses(multi_worker["first"][0])
            + logged_losses(multi_worker["second"][0]))
  single = logged_losses(multi_worker["single_log"])
  assert len(losses) == len(single) == 6
  np.testing.assert_allclose(losses, single, atol=2e-4)
  restored = []
  for train_dir in (multi_worker["train_dir"], multi_worker["single_dir"]):
    model, _, path = configuration.load_trained_model(train_dir, -1, models.ModelConfig(),
                                                         [], "float32")
    assert path.endswith("model.ckpt-6")
    restored.append({v.name: v.numpy() for v in model.variables})
  assert sorted(restored[0]) == sorted(restored[1])
  assert any("moving_mean" in name for name in restored[0])
  for name, value in restored[0].items():
    np.testing.assert_allclose(value, restored[1][name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_inference_split_by_tf_config_merges_to_the_one_process_output(multi_worker,
                                                                       data_dir):
  """Worker 1 of 2 (TF_CONFIG) runs inference.py; part 0 and the merge run in-process (the
  --merge_parts command line is tested in test_scripts.py)."""
  work_dir, train_dir = multi_worker["work_dir"], multi_worker["train_dir"]
  pattern = os.path.join(data_dir, "test*.tfrecord")
  output = os.path.join(work_dir, "predictions.csv")
  cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}  # only read, never contacted
  env = quiet_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": 1}}))
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "inference.py"), "--train_dir=" + train_dir,
       "--input_data_pattern=" + pattern, "--output_file=" + output, "--top_k=3",
       "--batch_size=5"], capture_output=True, text=True, env=env, timeout=PROCESS_TIMEOUT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.listdir(work_dir).count("predictions.csv.part-00001-of-00002") == 1
  model, config, _ = configuration.load_trained_model(train_dir, -1, models.ModelConfig(), [])
  parts = [inference.part_file_name(output, index, 2) for index in range(2)]
  inference.run_inference(model, config, pattern, parts[0], 5, 3, 2, task_index=0,
                          num_tasks=2)
  inference.merge_parts(output, parts)
  whole = os.path.join(work_dir, "whole.csv")
  inference.run_inference(model, config, pattern, whole, 7, 3, 2)
  merged = read(output).splitlines()
  assert merged[0] == "VideoId,LabelConfidencePairs" and len(merged) == 19
  assert merged == read(whole).splitlines()  # part i is file i: the same rows, same order
  assert len(read(parts[1]).splitlines()) == 10  # file 1 of 2: 9 videos and the header


if __name__ == "__main__":
  if sys.argv[1] == "mirrored":
    mirrored_main(*sys.argv[2:5])


# ----------------------------------------------------------------------------------------
# A worker killed mid-run.

def test_a_killed_worker_stops_the_other_with_what_happened_and_what_to_do(tmp_path):
  """Worker 1 is killed after step 4; the chief stops with one line that names worker 1, the
  last checkpoint and the way out, and does not blame the data."""
  data = str(tmp_path / "data")
  write_video_level(data, "train", 8, 2, seed=6)
  train_dir = str(tmp_path / "train")
  ports = free_ports(2)
  cluster = {"worker": ["127.0.0.1:%d" % p for p in ports]}
  processes, logs = [], [str(tmp_path / ("worker%d.log" % i)) for i in range(2)]
  try:
    for index in range(2):
      env = quiet_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": index}}))
      with open(logs[index], "w") as log:
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train.py"), "--train_dir=" + train_dir,
             "--train_data_pattern=" + os.path.join(data, "train*.tfrecord"),
             "--batch_size=4", "--max_steps=100000", "--num_epochs=100000",
             "--save_checkpoint_steps=2", "--export_model_steps=0"] + TRAIN_FLAGS,
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path)))
    deadline = time.time() + PROCESS_TIMEOUT
    while "] step 4 |" not in read(logs[1]):
      assert processes[1].poll() is None and time.time() < deadline, read(logs[1])[-3000:]
      time.sleep(0.2)
    processes[1].kill()
  finally:
    communicate_or_kill(processes)
  last_line = read(logs[0]).strip().splitlines()[-1]
  assert processes[0].returncode == 1, read(logs[0])[-3000:]
  latest = tf.train.latest_checkpoint(train_dir)
  assert latest is not None
  step = checkpoints.checkpoint_step(latest)
  assert step >= 2
  expected = (r"error: worker 1 \(127\.0\.0\.1:%d\) stopped or cannot be reached, so this "
              r"worker stopped too at step \d+; the last checkpoint is step %d \(%s\): restart "
              r"every worker with the same command to resume from it" % (
                  ports[1], step, re.escape(latest)))
  assert re.fullmatch(expected, last_line), last_line
