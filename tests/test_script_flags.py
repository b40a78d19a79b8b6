"""The command-line contract: prefixes, flags of other scripts, defaults, saved configuration."""
import os
import subprocess
import sys

import pytest
from absl import flags

from willow import checkpoints
from willow import configuration
from willow import models
from willow import readme_configs
from willow import script_flags
from willow import tf_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prefix_expansion_accepts_unique_prefixes_only():
  known = ["max_steps", "model", "moe_l2", "moe_prob_gating", "run_once", "noise"]
  out = script_flags.expand_flag_prefixes(
      ["prog", "--max_step=7", "--moe_l2=1e-6", "--run_once", "--nomoe_prob_gating",
       "--nomoe_prob", "--norun", "--nois=2", "--unknown=3", "positional", "--", "--mo"], known)
  assert out == ["prog", "--max_steps=7", "--moe_l2=1e-6", "--run_once", "--nomoe_prob_gating",
                 "--nomoe_prob_gating", "--norun_once", "--noise=2", "--unknown=3", "positional",
                 "--", "--mo"]
  for ambiguous, names in (("--mo=1", "--model, --moe_l2, --moe_prob_gating"),
                           ("--no", "--noise, --nomax_steps")):
    with pytest.raises(flags.Error, match="ambiguous flag %s: could be %s" % (
        ambiguous.split("=")[0], names)):
      script_flags.expand_flag_prefixes(["prog", ambiguous], known)


def test_ambiguous_prefix_is_a_one_line_error(tmp_path):
  result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--num=3"],
                          capture_output=True, text=True, cwd=str(tmp_path),
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: ambiguous flag --num: could be --num_classes, --num_epochs, ")


def parse(script, args):
  values = flags.FlagValues()
  script_flags.define_flags(script, values)
  values(script_flags.expand_flag_prefixes(["prog"] + args, list(values)))
  return values


def test_defaults_are_the_originals():
  train = parse("train", [])
  assert train.batch_size == 1024 and train.num_readers == 8
  assert train.base_learning_rate == 0.001 and train.learning_rate_decay == 0.9
  assert train.learning_rate_decay_examples == 4000000 and train.num_epochs == 15
  assert train.max_steps is None and train.optimizer == "AdamOptimizer"
  assert train.clip_gradient_norm == 1.0 and train.regularization_penalty == 1.0
  assert train.model == "LogisticModel" and train.feature_names == "mean_rgb"
  assert train.feature_sizes == "1024" and not train.frame_features
  assert train.netvlad_cluster_size == 64 and train.dbof_cluster_size == 16384
  assert train.moe_l2 == 1e-8 and train.moe_num_mixtures == 2 and train.iterations == 30
  assert train.train_dir.endswith("yt8m_model")
  inference = parse("inference", [])
  assert inference.batch_size == 8192 and inference.num_readers == 4 and inference.top_k == 20
  assert parse("eval", []).num_readers == 4


@pytest.mark.parametrize("willow", readme_configs.WILLOW_CONFIGS, ids=lambda c: c.key)
def test_readme_command_lines_parse_with_their_meaning(willow):
  train = parse("train", willow.train_args)
  assert train.max_steps == int(readme_configs.flag_value(willow.train_args, "max_step"))
  assert train.frame_features and train.feature_names == "rgb,audio"
  inference = parse("inference", willow.inference_args)  # run_once etc. are accepted
  assert inference.top_k == 50 and inference.output_file == willow.inference_output


def test_unknown_flag_is_an_error():
  with pytest.raises(flags.UnrecognizedFlagError):
    parse("train", ["--no_such_flag=1"])


def test_model_config_from_flags_and_reconcile(caplog):
  values = parse("train", readme_configs.CONFIGS_BY_KEY["netvlad"].train_args)
  config = script_flags.model_config_from_flags(values)
  assert config.model == "NetVLADModelLF" and config.netvlad_cluster_size == 256
  assert config.feature_sizes == (1024, 128) and config.moe_prob_gating
  requested = config.replace(moe_prob_gating=False, netvlad_cluster_size=8)
  kept = configuration.reconcile_config(config, requested, ["moe_prob_gating"], "dir")
  assert kept == config
  assert "moe_prob_gating" in caplog.text and "netvlad_cluster_size" not in caplog.text


def test_saved_config_round_trip(tmp_path):
  config = models.ModelConfig(model="GruModel", feature_names=("rgb", "audio"),
                              feature_sizes=(1024, 128), gru_cells=12)
  checkpoints.save_config(str(tmp_path), config)
  assert checkpoints.load_saved_config(str(tmp_path)) == config
  assert checkpoints.load_saved_config(str(tmp_path / "missing")) is None


def test_flags_doc_documents_every_flag():
  flags_doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "docs", "flags.md")).read()
  values = flags.FlagValues()
  script_flags.define_flags("train", values)
  undocumented = [name for name in values if "`--%s`" % name not in flags_doc]
  assert not undocumented


@pytest.mark.parametrize("argv, verbose", [
    ([], False), (["--verbose"], True), (["--verbose=false"], False), (["-verbose=True"], True),
    (["--verbose", "--noverbose"], False), (["--", "--verbose"], False),
    (["--verbosity=1"], False)])
def test_verbose_is_read_from_the_command_line_before_tensorflow_loads(argv, verbose):
  assert tf_env.verbose_requested(["train.py"] + argv) is verbose
