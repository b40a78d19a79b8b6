"""The command line a user meets: --help per script, typos, the model a train_dir resumes, and
train_flags.txt."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import make_synthetic_data
import utils
from willow import checkpoints
from willow import configuration
from willow import models
from willow import readme_configs
from willow import script_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, args, cwd=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, os.path.join(ROOT, script)] + list(args),
                        capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def defined(script):
  values = flags.FlagValues()
  script_flags.define_flags(script, values)
  return values


def parse(script, args):
  values = defined(script)
  script_flags.parse(["prog"] + list(args), values, script)
  return values


# ----------------------------------------------------------------------------------------
# --help: the script's own flags, grouped, one line each.

def help_lines(script):
  module = {"export": "export_model"}.get(script, script)
  doc = __import__(module).__doc__
  return script_flags.help_text(script, doc, defined(script)).splitlines()


def listed(lines):
  return {line.split()[0].split("=")[0] for line in lines if line.startswith("  --")}


def test_each_scripts_help_lists_its_own_flags_in_groups():
  train, evaluate, infer, export = (help_lines(s) for s in ("train", "eval", "inference",
                                                             "export"))
  assert {"--train_data_pattern", "--base_learning_rate", "--model", "--netvlad_cluster_size",
          "--train_dir", "--max_steps", "--label_loss", "--eval_data_pattern",
          "--eval_every_n_steps"} <= listed(train)  # the last two: evaluation while training
  assert not {"--output_file", "--run_once", "--top_k", "--netvlad_dimred"} & listed(train)
  assert {"--eval_data_pattern", "--run_once", "--top_k", "--model"} <= listed(evaluate)
  assert not {"--train_data_pattern", "--base_learning_rate", "--output_file"} & listed(evaluate)
  assert {"--input_data_pattern", "--output_file", "--merge_parts", "--num_tasks"} <= listed(infer)
  assert not {"--base_learning_rate", "--run_once", "--label_loss"} & listed(infer)
  assert {"--export_dir", "--check_point"} <= listed(export)
  assert not {"--batch_size", "--input_data_pattern"} & listed(export)
  # Groups in order, with the defaults on each flag's line.
  titles = [line for line in train if line.endswith(":") and not line.startswith(" ")]
  assert titles == ["Data:", "Model:", "Training:", "Output:"]
  assert "  --batch_size=1024 " in "\n".join(train)
  assert any(line.startswith("  --batch_size=8192 ") for line in infer)
  assert [line for line in evaluate if line.endswith(":")][2] == "Evaluation:"
  # A flag after the group that lists it, and never two lines for one flag.
  data = train[train.index("Data:") + 1:train.index("Model:")]
  assert "--train_data_pattern" in listed(data) and "--feature_names" in listed(data)
  assert len(listed(train)) == sum(line.startswith("  --") for line in train)
  assert all(len(line) <= 100 for line in train + evaluate + infer + export)


def test_help_of_the_scripts_as_run():
  result = run_script("train.py", ["--help"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("Trains a WILLOW model")
  assert "Training:" in result.stdout and "--output_file" not in result.stdout
  averaging = run_script("file_averaging.py", ["--help"])
  assert "--output_file" in averaging.stdout, averaging.stderr[-2000:]


# ----------------------------------------------------------------------------------------
# Typos and bad values: one line, with the nearest valid name.

@pytest.mark.parametrize("args, expected", [
    (["--model=NetVladModelLF"], "--model=NetVladModelLF is not one of "),
    (["--model=NetVladModelLF"], "; did you mean NetVLADModelLF?"),
    (["--learning_rate=0.01"], "did you mean --base_learning_rate?"),
    (["--base_learning_rat=0.01"], None),  # a unique prefix is no typo
    (["--trian_dir=x"], "unknown flag --trian_dir; did you mean --train_dir?"),
    (["--jit_compile=sometimes"], "--jit_compile=sometimes is not one of auto, true, false"),
    (["--jit_compile=True"], None),
    (["--batch_size=0"], "--batch_size=0"),
    (["--label_loss=Hinge"], "did you mean HingeLoss?"),
    (["--feature_names=rgb,audio", "--feature_sizes=1024"],
     "--feature_names has 2 entries (rgb,audio) but --feature_sizes has 1 (1024)"),
])
def test_bad_flags_are_one_line_with_the_nearest_name(args, expected):
  if expected is None:
    parse("train", args)
    return
  with pytest.raises(utils.InputError) as info:
    parse("train", args)
  assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_choices_and_prefixes_keep_their_meaning():
  values = parse("train", ["--jit_compile=True", "--max_step=7", "--nolightv", "--mixed=bf16"])
  assert values.jit_compile == "true" and values.max_steps == 7
  assert values.lightvlad is False and values.mixed_precision == "bf16"
  for willow in readme_configs.WILLOW_CONFIGS:  # the README's lines still parse
    parse("train", willow.train_args)
    parse("inference", willow.inference_args)


def test_a_typo_ends_the_script_with_one_line(tmp_path):
  result = run_script("train.py", ["--learning_rate=0.01"], cwd=str(tmp_path))
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ambiguous flag --learning_rate: could be "), last
  assert last.endswith("did you mean --base_learning_rate?"), last


# ----------------------------------------------------------------------------------------
# Which model a train_dir resumes.

NETVLAD = models.ModelConfig(model="NetVLADModelLF", netvlad_cluster_size=8)


def with_checkpoint(train_dir):
  """Checkpoint discovery needs only the index file."""
  open(os.path.join(train_dir, "model.ckpt-5.index"), "w").close()


def test_a_configuration_without_checkpoint_does_not_decide_the_model(tmp_path):
  """A first run that failed before its first checkpoint left model_config.json behind: the
  next run trains what its flags say."""
  checkpoints.save_config(str(tmp_path), NETVLAD)
  lstm = models.ModelConfig(model="LstmModel")
  assert configuration.config_to_train(str(tmp_path), lstm, ["model"]) == lstm


def test_a_contradicting_model_flag_is_an_error_when_resuming(tmp_path, caplog):
  checkpoints.save_config(str(tmp_path), NETVLAD)
  with_checkpoint(str(tmp_path))
  requested = NETVLAD.replace(model="LstmModel", netvlad_cluster_size=16)
  with pytest.raises(utils.InputError) as info:
    configuration.config_to_train(str(tmp_path), requested, ["model", "netvlad_cluster_size"])
  message = str(info.value)
  assert message.startswith("--model=\"LstmModel\" (saved: \"NetVLADModelLF\"), "
                            "--netvlad_cluster_size=16 (saved: 8) contradicts the model "
                            "trained in %s" % tmp_path), message
  assert "--start_new_model" in message and "another --train_dir" in message
  # The same flags as the saved configuration (a README line run again) resume silently.
  with caplog.at_level("WARNING"):
    assert configuration.config_to_train(str(tmp_path), NETVLAD, ["model"]) == NETVLAD
  assert caplog.text == ""
  # Flags left at their defaults say nothing about the model: the saved one is resumed.
  assert configuration.config_to_train(str(tmp_path), models.ModelConfig(), []) == NETVLAD
  assert configuration.config_to_train(str(tmp_path), requested, ["model"], True) == requested


def test_eval_and_inference_keep_the_saved_configuration_with_a_warning(tmp_path, caplog):
  checkpoints.save_config(str(tmp_path), NETVLAD)
  with_checkpoint(str(tmp_path))
  with caplog.at_level("WARNING"):
    kept = configuration.config_to_restore(str(tmp_path), NETVLAD.replace(gating=True),
                                           ["gating"])
  assert kept == NETVLAD and "ignoring --gating=True (saved: False)" in caplog.text


# ----------------------------------------------------------------------------------------
# train_flags.txt reruns the run.

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tiny"))
  make_synthetic_data.generate_partition(
      directory, "train", num_videos=48, num_shards=2, num_classes=6, seed=0,
      with_labels=True, min_frames=5, max_frames_gen=10, frame_level=False, video_level=True)
  return directory


def model_weights(train_dir):
  path = tf.train.latest_checkpoint(train_dir)
  return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
          if name.startswith("model/")}


def test_train_flags_file_reruns_the_run(tiny_data, tmp_path):
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  result = run_script("train.py", [
      "--train_data_pattern=%s/train*.tfrecord" % tiny_data, "--train_dir=" + first,
      "--model=MoeModel", "--feature_names=mean_rgb,mean_audio", "--feature_sizes=1024,128",
      "--num_classes=6", "--batch_size=8", "--max_step=3", "--seed=5",
      "--base_learning_rate=0.01", "--export_model_steps=0", "--run_once"])
  assert result.returncode == 0, result.stderr[-3000:]
  flags_file = os.path.join(first, "train_flags.txt")
  lines = open(flags_file).read().splitlines()
  assert "--max_steps=3" in lines and "--model=MoeModel" in lines and "--seed=5" in lines
  assert "--train_dir=" + first in lines and "--nostart_new_model" in lines
  assert not any(line.startswith("--run_once") for line in lines)  # not a train.py flag
  # Later flags win over the file's: the same run into another train_dir.
  rerun = run_script("train.py", ["--flagfile=" + flags_file, "--train_dir=" + second])
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert [line for line in open(os.path.join(second, "train_flags.txt")).read().splitlines()
          if not line.startswith("--train_dir")] == [
              line for line in lines if not line.startswith("--train_dir")]
  assert (open(os.path.join(first, "model_config.json")).read()
          == open(os.path.join(second, "model_config.json")).read())
  before, after = model_weights(first), model_weights(second)
  assert before.keys() == after.keys() and len(before) > 1
  for name in before:
    np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_train_flags_file_holds_the_model_the_run_trained():
  """A resumed run trains the saved configuration, whatever the model flags said: the file
  records that model, so that a rerun into another train_dir trains it too."""
  values = parse("train", ["--train_dir=/somewhere", "--max_step=3"])
  gru = models.ModelConfig(model="GruModel", feature_names=("rgb", "audio"),
                           feature_sizes=(1024, 128), gru_cells=12)
  text = script_flags.flagfile_text("train", values, gru)
  again = defined("train")
  lines = [line for line in text.splitlines() if not line.startswith("#")]
  script_flags.parse(["prog"] + lines, again, "train")
  assert script_flags.model_config_from_flags(again) == gru
  assert again.max_steps == 3 and again.train_dir == "/somewhere"
