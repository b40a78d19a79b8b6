"""Small helpers shared by the readers, the models and the scripts."""
from typing import List, Tuple


class InputError(ValueError):
  """A problem with the user's input (a flag, a file, a record), reported in one line.

  Scripts catch it at their edge, print `error: <message>` and exit non-zero.
  """


def parse_feature_list(feature_names: str, feature_sizes: str) -> Tuple[List[str], List[int]]:
  """Parses the comma-separated --feature_names / --feature_sizes pair, validated."""
  names = [n.strip() for n in str(feature_names).split(",") if n.strip()]
  try:
    sizes = [int(s) for s in str(feature_sizes).split(",") if s.strip()]
  except ValueError:
    raise InputError("--feature_sizes must be comma-separated integers, got %r" % feature_sizes)
  if not names:
    raise InputError("--feature_names is empty")
  if len(names) != len(sizes):
    raise InputError(
        "--feature_names has %d entries (%s) but --feature_sizes has %d (%s); they must match"
        % (len(names), feature_names, len(sizes), feature_sizes))
  if any(s <= 0 for s in sizes):
    raise InputError("--feature_sizes must be positive, got %r" % feature_sizes)
  return names, sizes
