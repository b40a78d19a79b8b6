"""Errors the scripts report in one line, and outputs that appear whole or not at all.

Free of TensorFlow on purpose: file_averaging.py imports it and starts in a fraction of a second.
"""
import contextlib
import errno
import os
import tempfile


class InputError(ValueError):
  """A problem with the user's input (a flag, a file, a record), reported in one line.

  Scripts catch it at their edge, print `error: <message>` and exit non-zero.
  """


# ----------------------------------------------------------------------------------------------
# Outputs that appear whole or not at all.

@contextlib.contextmanager
def atomic_output(path: str, mode: str = "w"):
  """Yields a file object writing to a temporary sibling of path, renamed to path only when
  the block completes; on any error the temporary file is removed and path is untouched."""
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise InputError("cannot write %s: directory %s does not exist" % (path, directory))
  if os.path.isdir(path):
    raise InputError("cannot write %s: it is a directory" % path)
  try:
    fd, temporary = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                                     suffix=".tmp", dir=directory)
  except OSError as e:
    raise InputError("cannot write %s: %s" % (path, e.strerror or e))
  try:
    # mkstemp creates the file 0600; the output gets the mode a plain open(path, "w") gives.
    os.fchmod(fd, plain_file_mode())
    with os.fdopen(fd, mode) as f:
      yield f
    os.replace(temporary, path)
  except BaseException as e:
    if os.path.exists(temporary):
      os.unlink(temporary)
    # A full disk, a file-size limit or a read-only file system is the user's to fix: one line.
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
      raise InputError("cannot write %s: %s (it was left unchanged)" % (path, e.strerror or e))
    raise


def plain_file_mode() -> int:
  """The mode open(path, "w") gives a new file: 0666 less the process's umask."""
  return 0o666 & ~current_umask()


def current_umask() -> int:
  """The process's umask. Read from /proc where it can be (Linux): os.umask can only read it
  by setting it, and a file another thread creates in between would get umask 0."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  umask = os.umask(0o077)  # the briefest window, and a safe mode for anything made in it
  os.umask(umask)
  return umask


# Errors only a write can raise (so one in the block is about this file, not a file it reads).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)


def atomic_write_text(path: str, text: str):
  with atomic_output(path) as f:
    f.write(text)
