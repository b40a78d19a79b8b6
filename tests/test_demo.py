"""`make demo` in a reduced form: every stage runs and the submission is well formed."""
import os
import subprocess
import sys

import pytest

from willow import readme_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One model of each family (cluster pooling, bag of words, recurrent): every stage of the
# pipeline runs for each. The seven README lines themselves are run by
# tests/test_scripts.py::test_readme_command_lines_run_unchanged.
DEMO_MODELS = ("netvlad", "soft_dbof", "lstm")


@pytest.mark.slow
def test_demo_pipeline_writes_a_blended_submission(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "demo.py"), "--quick", "--videos=64",
       "--models=" + ",".join(DEMO_MODELS), "--output_dir=%s" % tmp_path,
       "--train_flags=--log_steps=5 --export_model_steps=0"],
      capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  train_lines = [l for l in result.stdout.splitlines() if l.startswith("  $ python train.py")]
  assert len(train_lines) == len(DEMO_MODELS)
  assert all(l.endswith(" --log_steps=5 --export_model_steps=0") for l in train_lines)
  assert result.stdout.count("  trained in ") == len(DEMO_MODELS)
  for willow in readme_configs.WILLOW_CONFIGS:
    assert (willow.title in result.stdout) == (willow.key in DEMO_MODELS)
    assert (tmp_path / willow.inference_output).exists() == (willow.key in DEMO_MODELS)
  lines = (tmp_path / "WILLOW_submission.csv").read_text().splitlines()
  assert lines[0] == "VideoId,LabelConfidencePairs"
  assert len(lines) == 1 + 64  # one row per test video
  assert all(len(line.split(",")[1].split()) == 40 for line in lines[1:])  # top 20 pairs
  assert "ensemble (WILLOW_submission.csv)" in result.stdout
