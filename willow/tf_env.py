"""Settings TensorFlow reads from the environment when it loads: import this module before
TensorFlow (the scripts do it first thing).

TensorFlow's default CPU allocator page-faults every large buffer afresh; its BFC allocator
reuses them (train steps and reader decoding run several times faster, BENCHMARKS.md). A value
the user set in the environment wins.

Quiet by default: TensorFlow's own log lines (C++ banners about oneDNN and CPU features, XLA
and tf.data notes, Python INFO lines of its checkpoint and distribution code) are not shown;
errors are. `--verbose` on the command line (or TF_CPP_MIN_LOG_LEVEL=0 or 1 set by the user)
shows them. TensorFlow reads its C++ level once, when it loads: hence here, from sys.argv,
before the flags are parsed. Two lines print before it reads it (docs/flags.md, console).
"""
import importlib.util
import logging
import os
import sys

from absl import logging as absl_logging

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

# TensorFlow C++ levels: 0 all, 1 no INFO, 2 no WARNING either (errors stay), 3 no ERROR.
QUIET_CPP_LEVEL = "2"
# The same levels for TensorFlow's Python logger.
_PYTHON_LEVELS = {"0": logging.INFO, "1": logging.WARNING}


def verbose_requested(argv) -> bool:
  """Whether argv turns --verbose on (the last of --verbose[=bool] / --noverbose wins)."""
  verbose = False
  for arg in argv[1:]:
    if arg == "--":
      break
    name, _, value = arg.lstrip("-").partition("=")
    if arg.startswith("-") and name == "verbose":
      verbose = value.lower() in ("", "true", "1", "t", "yes", "y")
    elif arg.startswith("-") and name == "noverbose" and not value:
      verbose = False
  return verbose


class _TensorFlowNotes(logging.Filter):
  """Drops the INFO and WARNING records TensorFlow's and Keras's own modules log through absl
  (the scripts' logger): "Sharding callback duration", "Assets written to", ..."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level
    self.directories = tuple(os.path.join(location, "") for name in ("tensorflow", "keras")
                             for location in _package_locations(name))

  def filter(self, record) -> bool:
    return record.levelno >= self.level or not record.pathname.startswith(self.directories)


def _package_locations(name: str):
  """Where a package is installed, found without importing it."""
  try:
    spec = importlib.util.find_spec(name)
  except (ImportError, ValueError):
    return []
  return list(spec.submodule_search_locations or []) if spec else []


def set_tensorflow_verbosity(verbose: bool):
  """TensorFlow's C++ (when it has not loaded yet) and Python log levels: everything when
  verbose, else the user's TF_CPP_MIN_LOG_LEVEL or, by default, errors only."""
  if verbose:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
  level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_CPP_LEVEL).strip()
  python_level = _PYTHON_LEVELS.get(level, logging.ERROR)
  logging.getLogger("tensorflow").setLevel(python_level)
  absl_logger = absl_logging.get_absl_logger()
  for old in [f for f in absl_logger.filters if isinstance(f, _TensorFlowNotes)]:
    absl_logger.removeFilter(old)
  if python_level > logging.INFO:
    absl_logger.addFilter(_TensorFlowNotes(python_level))


set_tensorflow_verbosity(verbose_requested(sys.argv))
