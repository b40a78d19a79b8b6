"""Shared test setup: the flat project modules on sys.path, TensorFlow quiet, and the data and
helpers of the test files that run the scripts on video-level data (test_fault_injection.py,
test_reliability.py)."""
import os
import resource
import signal
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

VIDEO_LEVEL_CLASSES = 20


@pytest.fixture(scope="session")
def video_level_dir(tmp_path_factory):
  """Generated video-level records (mean_rgb, mean_audio; VIDEO_LEVEL_CLASSES classes):
  train*: 128 videos in 2 files, test*: 24 in 1 file. Read only."""
  import make_synthetic_data
  directory = str(tmp_path_factory.mktemp("video_level"))
  for partition, count, shards, seed in (("train", 128, 2, 0), ("test", 24, 1, 1)):
    make_synthetic_data.generate_partition(
        directory, partition, num_videos=count, num_shards=shards,
        num_classes=VIDEO_LEVEL_CLASSES, seed=seed, frame_level=False, video_level=True)
  return directory


def script_environment():
  """The environment of a script run as a subprocess: quiet, the project importable."""
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


def one_line_error(returncode, stderr):
  """The single `error:` line of a script that failed as it should (exit 1, no traceback)."""
  lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
  assert returncode == 1 and len(lines) == 1, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


def call_main(monkeypatch, module, script, argv):
  """Parses argv as the script does and runs its main() in-process (cheaper than a subprocess:
  no fresh TensorFlow); the module and script_flags read a private FlagValues. The scripts'
  wrapper turns the InputError raised here (by the parser or by main) into one `error:` line
  and exit status 1 (tests/test_scripts.py runs that end to end)."""
  from absl import flags
  from willow import script_flags
  values = flags.FlagValues()
  script_flags.define_flags(script, values)
  script_flags.parse([script] + list(argv), values, script)
  monkeypatch.setattr(module, "FLAGS", values)
  monkeypatch.setattr(script_flags, "FLAGS", values)
  return module.main([script])


def limit_file_size(max_bytes):
  """preexec_fn: no file the process writes may grow past max_bytes. A write beyond fails
  with EFBIG as it would with ENOSPC on a full disk (SIGXFSZ ignored so that the write fails
  instead of killing the process); unprivileged and portable, unlike a tiny tmpfs."""
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
  return apply
