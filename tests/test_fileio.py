"""Outputs written whole or not at all, with the mode a plain open(path, "w") gives."""
import os
import stat

import pytest

from willow import fileio


def mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


class Umask:
  """Sets the process's umask for a block (and restores it)."""

  def __init__(self, umask):
    self.umask = umask

  def __enter__(self):
    self.previous = os.umask(self.umask)

  def __exit__(self, *unused):
    os.umask(self.previous)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomic_output_gets_the_mode_of_a_plain_open(tmp_path, umask):
  with Umask(umask):
    assert fileio.current_umask() == umask
    with open(tmp_path / "plain.txt", "w") as f:  # the reference
      f.write("x")
    with fileio.atomic_output(str(tmp_path / "atomic.txt")) as f:
      f.write("x")
    fileio.atomic_write_text(str(tmp_path / "text.txt"), "x")
    with fileio.atomic_output(str(tmp_path / "binary.csv"), "wb") as f:
      f.write(b"x")
  expected = mode(tmp_path / "plain.txt")
  assert expected == 0o666 & ~umask
  for name in ("atomic.txt", "text.txt", "binary.csv"):
    assert mode(tmp_path / name) == expected, name
  assert sorted(os.listdir(tmp_path)) == ["atomic.txt", "binary.csv", "plain.txt", "text.txt"]
