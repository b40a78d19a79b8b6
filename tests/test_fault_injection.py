"""Faults during training: SIGKILL at random moments, SIGTERM/SIGINT, NaN losses, full disks.

train.py runs as a subprocess on a small video-level MoE and generated data, exactly as a user
runs it. The kill test restarts it with the same command after every kill and checks, from the
files and the logs, that it resumes from the last complete checkpoint (never a corrupt one),
that the step never goes backwards and that the learning-rate schedule continues where it was.
Besides kills at random times it injects kills at the exact points of a checkpoint save where
TensorFlow leaves partial files (a wrapper patches TensorFlow's checkpoint functions to SIGKILL
the process there), since a random kill hits those points only by luck.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import (ROOT, VIDEO_LEVEL_CLASSES, limit_file_size, one_line_error,
                      script_environment)

NUM_CLASSES = VIDEO_LEVEL_CLASSES
BATCH = 8
BASE_LR, DECAY, DECAY_EXAMPLES = 0.01, 0.8, 80   # the learning rate decays every 10 steps
ITERATIONS_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
FAULT_SEED = 20240607
# Compiling the step with XLA adds seconds to each of the many starts and has nothing to do
# with checkpoints or input errors.
FAST_ARGS = ["--jit_compile=false"]


def train_args(data_dir, train_dir, *extra):
  return [
      "--train_data_pattern=%s/train*.tfrecord" % data_dir, "--train_dir=" + train_dir,
      "--model=MoeModel", "--feature_names=mean_rgb,mean_audio", "--feature_sizes=1024,128",
      "--num_classes=%d" % NUM_CLASSES, "--batch_size=%d" % BATCH, "--num_readers=2",
      "--save_checkpoint_steps=4", "--keep_checkpoints=3", "--log_steps=1",
      "--export_model_steps=0", "--base_learning_rate=%g" % BASE_LR,
      "--learning_rate_decay=%g" % DECAY, "--learning_rate_decay_examples=%d" % DECAY_EXAMPLES,
      "--num_epochs=100000", "--max_steps=100000"] + FAST_ARGS + list(extra)


def expected_learning_rate(step):
  return BASE_LR * DECAY ** np.floor(step * BATCH / DECAY_EXAMPLES)


# Runs train.py after patching one TensorFlow checkpoint function to SIGKILL the process on
# its N-th call: before_merge (the data is in <prefix>_temp, not yet renamed), before_state
# (the new checkpoint is complete, the state file still names the previous one), mid_sweep
# (the state file names the new checkpoint; an old one is half deleted).
KILL_WRAPPER = r"""
import os, runpy, signal, sys
point, count = os.environ["WILLOW_KILL_POINT"].split(":")
count, calls = int(count), [0]
from tensorflow.python.checkpoint import checkpoint_management, functional_saver

def killing(original, after):
  def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == count and not after:
      os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if calls[0] == count and after:
      os.kill(os.getpid(), signal.SIGKILL)
    return result
  return wrapped

if point == "before_merge":
  ops = functional_saver.gen_io_ops
  ops.merge_v2_checkpoints = killing(ops.merge_v2_checkpoints, after=False)
elif point == "before_state":
  checkpoint_management.update_checkpoint_state_internal = killing(
      checkpoint_management.update_checkpoint_state_internal, after=False)
elif point == "mid_sweep":
  checkpoint_management._delete_file_if_exists = killing(
      checkpoint_management._delete_file_if_exists, after=True)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Run:
  """train.py running in the background, its stderr collected line by line."""

  def __init__(self, args, kill_point=None):
    script = os.path.join(ROOT, "train.py")
    env = script_environment()
    if kill_point:
      env["WILLOW_KILL_POINT"] = kill_point
      command = [sys.executable, "-c", KILL_WRAPPER, script] + args
    else:
      command = [sys.executable, script] + args
    self.started = time.time()
    self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    text=True, env=env)
    self.lines, self.last_step, self.resumed = [], None, None
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.process.stderr:
      self.lines.append(line)
      match = re.search(r"\] step (\d+) \|", line)
      if match:
        self.last_step = int(match.group(1))
      elif self.resumed is None:
        self.resumed = resumption(line)

  def wait_until(self, condition, interval, timeout=300):
    """Polls condition every `interval` seconds (the test competes with train.py for the
    CPU: poll only as often as the timing needs)."""
    deadline = time.time() + timeout
    while not condition():
      assert self.process.poll() is None, "train.py ended early:\n" + self.log()[-3000:]
      assert time.time() < deadline, "timed out:\n" + self.log()[-3000:]
      time.sleep(interval)

  def signal(self, signum):
    self.process.send_signal(signum)
    return self.finish()

  def finish(self, timeout=300):
    returncode = self.process.wait(timeout=timeout)
    self.reader.join(timeout=30)
    return returncode

  def log(self):
    return "".join(self.lines)


def temp_entries(train_dir):
  return [n for n in os.listdir(train_dir) if "_temp" in n or ".tmp" in n or "tempstate" in n]


def checkpoint_step(path):
  return int(path.rsplit("-", 1)[1]) if path else 0


def verify_complete_checkpoint(path):
  """Every tensor of the checkpoint reads back (checksums included) and is finite; returns
  the optimizer's step counter stored in it."""
  reader = tf.train.load_checkpoint(path)
  for name, dtype in reader.get_variable_to_dtype_map().items():
    value = reader.get_tensor(name)
    if dtype.is_floating:
      assert np.all(np.isfinite(value)), (path, name)
  return int(reader.get_tensor(ITERATIONS_KEY))


def resumption(log):
  """(step, learning rate) the run says it resumed from, 0 for a fresh start, None if it was
  killed before saying."""
  match = re.search(r"resumed from (\S+) \(step (\d+), learning rate (\S+)\)", log)
  if match:
    assert checkpoint_step(match.group(1)) == int(match.group(2))
    return int(match.group(2)), float(match.group(3))
  return (0, None) if "starting from scratch" in log else None


def kill_plan(num_kills, rng):
  """(mode, parameter) per kill, the modes in turn; the parameters drawn from rng."""
  modes = ["during_step", "during_write", "at_random_time", "before_state", "during_step",
           "during_write", "before_merge", "at_random_time", "during_write", "mid_sweep"]
  plan = []
  for i in range(num_kills):
    mode = modes[i % len(modes)]
    if mode == "during_step":
      parameter = (int(rng.integers(1, 12)), float(rng.uniform(0.0, 0.05)))
    elif mode == "during_write":
      parameter = float(rng.uniform(0.0, 0.03))
    elif mode == "at_random_time":
      parameter = float(rng.uniform(1.0, 8.0))
    elif mode == "before_state":
      parameter = "before_state:%d" % (2 * rng.integers(0, 3) + 1)  # the first write of a save
    elif mode == "mid_sweep":
      parameter = "mid_sweep:1"
    else:
      parameter = "before_merge:%d" % rng.integers(1, 4)
    plan.append((mode, parameter))
  return plan


def start_and_kill(args, train_dir, mode, parameter):
  """Starts train.py and SIGKILLs it at the planned moment; returns the finished Run."""
  run = Run(args, kill_point=parameter if isinstance(parameter, str) else None)
  if mode == "during_step":
    steps, delay = parameter
    run.wait_until(lambda: run.resumed is not None and run.last_step is not None
                   and run.last_step >= run.resumed[0] + steps, interval=0.005)
    time.sleep(delay)
  elif mode == "during_write":
    # Once the run has started (and removed what an earlier kill left), the first
    # <prefix>_temp to appear is a save in progress.
    run.wait_until(lambda: run.resumed is not None and any(
        n.endswith("_temp") for n in os.listdir(train_dir)), interval=0.001)
    time.sleep(parameter)
  elif mode == "at_random_time":
    time.sleep(max(0.0, run.started + parameter - time.time()))
  if mode in ("during_step", "during_write", "at_random_time"):
    assert run.process.poll() is None, "train.py ended before the kill:\n" + run.log()[-3000:]
    run.process.send_signal(signal.SIGKILL)
  returncode = run.finish()
  assert returncode == -signal.SIGKILL, (returncode, run.log()[-3000:])
  return run


def kill_and_restart(data_dir, train_dir, num_kills, seed):
  """Kills training num_kills times and restarts it with the same command each time; checks
  every resumption; ends with a SIGTERM and a SIGINT. Returns the measurements."""
  args = train_args(data_dir, train_dir)
  rng = np.random.default_rng(seed)
  records, previous_resumed, leftovers = [], 0, []
  expected = None   # the step the next run must resume from
  for mode, parameter in kill_plan(num_kills, rng):
    run = start_and_kill(args, train_dir, mode, parameter)
    resumed = resumption(run.log())
    if resumed is not None and leftovers:
      assert "removed what an interrupted save left in %s: %s" % (
          train_dir, ", ".join(sorted(leftovers))) in run.log(), run.log()[-3000:]
    if resumed is not None and expected is not None:
      step, learning_rate = resumed
      assert step == expected, (mode, step, expected, run.log()[-3000:])
      assert step >= previous_resumed
      if step:
        assert learning_rate == pytest.approx(expected_learning_rate(step), rel=1e-5)
        first_step = re.search(r"\] step (\d+) \|", run.log())
        assert first_step is None or int(first_step.group(1)) == step + 1
      previous_resumed = step
    leftovers = temp_entries(train_dir)
    latest = tf.train.latest_checkpoint(train_dir)
    latest_step = checkpoint_step(latest)
    unrecorded = sorted(int(n[len("model.ckpt-"):-len(".index")]) for n in os.listdir(train_dir)
                        if re.fullmatch(r"model\.ckpt-\d+\.index", n)
                        and int(n[len("model.ckpt-"):-len(".index")]) > latest_step)
    if latest:
      assert verify_complete_checkpoint(latest) == latest_step
    assert latest_step >= (expected or 0), "the last complete checkpoint went backwards"
    records.append(dict(mode=mode, resumed=resumed and resumed[0], last_step=run.last_step,
                        latest=latest_step, leftovers=leftovers, unrecorded=unrecorded,
                        seconds=time.time() - run.started))
    expected = latest_step
  for signum in (signal.SIGTERM, signal.SIGINT):
    run = Run(args)
    run.wait_until(lambda: run.resumed is not None and run.last_step is not None
                   and run.last_step >= run.resumed[0] + 3, interval=0.01)
    assert run.resumed[0] == expected
    returncode = run.signal(signum)
    log = run.log()
    assert returncode == 0, log[-3000:]
    finished = re.search(r"training finished at step (\d+) \(stopped by signal\)", log)
    assert finished and "received signal %d" % signum in log, log[-3000:]
    step = int(finished.group(1))
    assert step >= run.last_step and "saved %s/model.ckpt-%d (stopped by signal)" % (
        train_dir, step) in log
    latest = tf.train.latest_checkpoint(train_dir)
    assert latest.endswith("model.ckpt-%d" % step) and verify_complete_checkpoint(latest) == step
    records.append(dict(mode=signal.Signals(signum).name, resumed=resumption(log)[0],
                        last_step=run.last_step, latest=step, leftovers=temp_entries(train_dir),
                        unrecorded=[], seconds=time.time() - run.started))
    expected = step
  return records


def summarize(records):
  lines = ["%-15s resumed %-5s last logged step %-5s latest checkpoint %-5s %s%s(%.1f s)" % (
      r["mode"], r["resumed"], r["last_step"], r["latest"],
      ("leftovers %s " % r["leftovers"]) if r["leftovers"] else "",
      ("unrecorded checkpoints %s " % r["unrecorded"]) if r["unrecorded"] else "",
      r["seconds"]) for r in records]
  return "\n".join(lines)


def check_kill_records(records, num_kills):
  kills = records[:num_kills]
  print("\n" + summarize(records))
  # The precise kill points did leave what they are meant to leave, and every restart
  # afterwards resumed (checked in kill_and_restart) regardless.
  assert any(r["leftovers"] for r in kills if r["mode"] == "before_merge"), summarize(records)
  assert any(r["unrecorded"] for r in kills if r["mode"] == "before_state"), summarize(records)
  # Training made progress across the kills.
  assert records[-1]["latest"] > 12, summarize(records)
  steps = [r["latest"] for r in records]
  assert steps == sorted(steps), summarize(records)


def test_sigkill_at_random_moments_then_restart_resumes_from_the_last_complete_checkpoint(
    video_level_dir, tmp_path):
  # 12 kills: every mode of kill_plan's cycle, then two more random ones.
  train_dir = str(tmp_path / "train")
  records = kill_and_restart(video_level_dir, train_dir, num_kills=12, seed=FAULT_SEED)
  check_kill_records(records, 12)


# ------------------------------------------------------------------------------------------
# Damaged checkpoints, NaN / Inf, unwritable train_dir, full disk: one short training run
# (checkpoints at steps 1, 2, 3) is copied for each case.

def train_py(*args, preexec_fn=None):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py")] + list(args),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=script_environment(), preexec_fn=preexec_fn)


def finished(process, timeout=600):
  """(returncode, stderr) of a Popen; several can run at once (the machine has 2 cores)."""
  _, stderr = process.communicate(timeout=timeout)
  return process.returncode, stderr


@pytest.fixture(scope="module")
def three_checkpoints(video_level_dir, tmp_path_factory):
  train_dir = str(tmp_path_factory.mktemp("three_checkpoints") / "train")
  returncode, stderr = finished(train_py(*train_args(video_level_dir, train_dir, "--max_steps=3",
                                                     "--save_checkpoint_steps=1")))
  assert returncode == 0, stderr[-3000:]
  return train_dir


def copy_of(train_dir, tmp_path, name):
  # The state file names the checkpoints relative to its directory: a copy is usable.
  copy = str(tmp_path / name)
  shutil.copytree(train_dir, copy)
  return copy


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(video_level_dir,
                                                                  three_checkpoints, tmp_path):
  """Not something a crash can cause (saves are atomic), but disks fail: resuming from the
  newest checkpoint that reads back beats a traceback."""
  train_dir = copy_of(three_checkpoints, tmp_path, "damaged")
  data = os.path.join(train_dir, "model.ckpt-3.data-00000-of-00001")
  with open(data, "r+b") as f:
    f.seek(os.path.getsize(data) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  returncode, stderr = finished(train_py(*train_args(video_level_dir, train_dir, "--max_steps=5")))
  assert returncode == 0, stderr[-3000:]
  assert "cannot resume from %s/model.ckpt-3" % train_dir in stderr
  assert "resumed from %s/model.ckpt-2 (step 2," % train_dir in stderr
  assert verify_complete_checkpoint(tf.train.latest_checkpoint(train_dir)) == 5


def test_nan_or_inf_stops_training_naming_the_step_and_saves_nothing_of_it(
    video_level_dir, three_checkpoints, tmp_path):
  cases = {
      # Overflows to Inf in float32: the first update makes the weights Inf/NaN while the
      # loss of that step (computed before the update) is still finite; the save right after
      # it must refuse them.
      "1e39": "holds NaN or Inf after the step's update; not saved",
      # Weights near the float32 limit: the next step's loss is Inf.
      "1e38": "the loss is inf",
  }
  runs = {}
  for learning_rate in cases:
    train_dir = copy_of(three_checkpoints, tmp_path, "lr" + learning_rate)
    runs[learning_rate] = train_dir, train_py(*train_args(
        video_level_dir, train_dir, "--save_checkpoint_steps=1", "--max_steps=200",
        "--base_learning_rate=" + learning_rate, "--optimizer=GradientDescentOptimizer",
        "--clip_gradient_norm=0"))
  for learning_rate, (train_dir, process) in runs.items():
    returncode, stderr = finished(process)
    error = one_line_error(returncode, stderr)
    match = re.match(r"error: training stopped at step (\d+): ", error)
    assert match and cases[learning_rate] in error, error
    assert error.endswith("the last checkpoint in %s is intact" % train_dir), error
    failed_step = int(match.group(1))
    assert failed_step > 3
    for path in tf.train.get_checkpoint_state(train_dir).all_model_checkpoint_paths:
      assert verify_complete_checkpoint(path) == checkpoint_step(path) < failed_step
    on_disk = [int(n.split("-")[1].split(".")[0]) for n in os.listdir(train_dir)
               if n.endswith(".index")]
    assert max(on_disk) < failed_step, (on_disk, failed_step)
    assert "saved %s/model.ckpt-%d" % (train_dir, failed_step) not in stderr
    print("\nlearning rate %s: %s; checkpoints on disk %s" % (learning_rate, error,
                                                             sorted(on_disk)))


def test_full_disk_or_unwritable_train_dir_is_one_line_and_keeps_the_checkpoints(
    video_level_dir, three_checkpoints, tmp_path):
  full = copy_of(three_checkpoints, tmp_path, "full")
  before = {n: os.path.getsize(os.path.join(full, n)) for n in os.listdir(full)
            if n.startswith("model.ckpt-")}
  # A checkpoint is ~1.4 MB; 200 kB lets everything else (summaries, state file) be written.
  full_run = train_py(*train_args(video_level_dir, full, "--save_checkpoint_steps=2"),
                      preexec_fn=limit_file_size(200_000))
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  impossible = str(blocker / "train")
  impossible_run = train_py(*train_args(video_level_dir, impossible, "--max_steps=3"))

  error = one_line_error(*finished(full_run))
  assert error.startswith("error: cannot save the checkpoint of step 5 in %s: " % full), error
  assert error.endswith("the latest complete checkpoint is %s/model.ckpt-3" % full), error
  assert tf.train.latest_checkpoint(full).endswith("model.ckpt-3")
  for step in (1, 2, 3):
    assert verify_complete_checkpoint(os.path.join(full, "model.ckpt-%d" % step)) == step
  after = {n: os.path.getsize(os.path.join(full, n)) for n in os.listdir(full)
           if n.startswith("model.ckpt-") and "_temp" not in n}
  assert after == before
  error = one_line_error(*finished(impossible_run))
  assert "cannot create --train_dir=%s" % impossible in error and "not a directory" in error
