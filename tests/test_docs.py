"""The documentation shows what the code runs and refers only to what the repository holds."""
import glob
import os
import re

import pytest

from willow import readme_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKDOWN = sorted([os.path.join(ROOT, "README.md"), os.path.join(ROOT, "BENCHMARKS.md")]
                  + glob.glob(os.path.join(ROOT, "docs", "*.md")))
# The target of an inline link or image, [text](target), outside code spans and blocks.
LINK = re.compile(r"\]\(([^()\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def relative(path):
  return os.path.relpath(path, ROOT)


def heading_anchors(text):
  """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces
  turned into hyphens."""
  headings = re.findall(r"^#+ +(.+?) *$", CODE.sub("", text), re.MULTILINE)
  return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("name, limit", [("README.md", 25_000), ("BENCHMARKS.md", 15_000)])
def test_top_level_documents_stay_short(name, limit):
  assert os.path.getsize(os.path.join(ROOT, name)) <= limit


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_no_reference_to_material_users_do_not_get(path):
  text = read(path)
  for word in ("SPEC.md", "../shared", "/work/shared"):
    assert word not in text, "%s mentions %s" % (relative(path), word)


def test_readme_shows_the_original_command_lines():
  """Each configuration's training and inference line, as readme_configs.py (and the tests
  that run them) has it; configuration 3's inference reads the directory its training wrote."""
  readme = read(os.path.join(ROOT, "README.md"))
  for willow in readme_configs.WILLOW_CONFIGS:
    inference = willow.inference_command.replace(
        "--train_dir=%s " % readme_configs.flag_value(willow.inference_args, "train_dir"),
        "--train_dir=%s " % willow.train_dir)
    for line in (willow.train_command, inference):
      assert line.replace("{features}", "$path_to_features") in readme, line[:80]


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_links_resolve_in_the_repository(path):
  text = read(path)
  broken = []
  for target in LINK.findall(CODE.sub("", text)):
    if re.match(r"[a-z]+:", target):  # https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
    if not os.path.exists(linked):
      broken.append(target)
    elif anchor and linked.endswith(".md") and anchor not in heading_anchors(read(linked)):
      broken.append(target)
  assert not broken, "%s links to what does not exist: %s" % (relative(path), broken)
