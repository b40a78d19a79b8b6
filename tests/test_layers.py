"""Dependencies go one way (willow/__init__.py lists the layers): checked on the import
statements of every .py file of the repository, function-level imports included.

- no import cycle between the repository's modules;
- a module imports only modules of its own layer or of the layers below it (so no library
  module imports a script or the flag module);
- only the scripts and willow/script_flags.py touch absl's FLAGS (or define flags in it).
"""
import ast
import os
from typing import Dict, List, Optional, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top to bottom; a module may import its own layer and the layers after it.
LAYERS = ("scripts", "flag definitions", "configuration", "library", "blocks and I/O")
# The card's top-level files that are library code (the rest of the top level is scripts).
TOP_LEVEL_LIBRARY = {"frame_level_models", "video_level_models", "losses", "readers",
                     "eval_util", "average_precision_calculator",
                     "mean_average_precision_calculator"}
BLOCKS_AND_IO = {"utils", "willow.model_blocks", "willow.fileio", "willow.tf_env"}


def layer_of(module: str) -> str:
  """tests/ and benchmarks/ are scripts; willow/ is library unless listed otherwise."""
  if module in BLOCKS_AND_IO:
    return "blocks and I/O"
  if module == "willow.script_flags":
    return "flag definitions"
  if module == "willow.configuration":
    return "configuration"
  if module.startswith("willow") or module in TOP_LEVEL_LIBRARY:
    return "library"
  return "scripts"


def python_files(root: str = ROOT) -> Dict[str, str]:
  """{module name: path} of every .py file outside hidden directories and outputs."""
  found = {}
  for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = sorted(d for d in subdirectories
                               if not d.startswith(".") and d not in ("__pycache__",
                                                                      "demo_output"))
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        relative = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        found[relative[:-len(".__init__")] if relative.endswith(".__init__") else relative] = path
  return found


def resolve(name: str, importer: str, modules: Dict[str, str]) -> Optional[str]:
  """The repository module `import name` loads in `importer`: a module of the repository's
  root (the scripts' directory), else one beside the importer (tests/ and benchmarks/ put
  their own directory on sys.path); None for third-party modules."""
  package = importer.rsplit(".", 1)[0] if "." in importer else ""
  for candidate in (name, package + "." + name if package else name):
    if candidate in modules:
      return candidate
  return None


def imports_of(tree: ast.AST, importer: str, modules: Dict[str, str]) -> Set[str]:
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from willow import checkpoints` imports the module willow.checkpoints.
      names = [node.module + "." + alias.name for alias in node.names] + [node.module]
    else:
      continue
    for name in names:
      resolved = resolve(name, importer, modules)
      if resolved is not None and resolved != importer:
        found.add(resolved)
  # `from willow import x` also names the package itself: only keep it if nothing under it.
  return {m for m in found if not any(other.startswith(m + ".") for other in found)}


def touches_flags(tree: ast.AST) -> List[int]:
  """Lines that use absl's FLAGS or define a flag (flags.DEFINE_*)."""
  lines = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Name) and node.id == "FLAGS":
      lines.append(node.lineno)
    elif isinstance(node, ast.Attribute) and (node.attr == "FLAGS"
                                              or node.attr.startswith("DEFINE")):
      lines.append(node.lineno)
  return sorted(set(lines))


def import_graph(sources: Dict[str, str]) -> Dict[str, Set[str]]:
  """{module: repository modules it imports} from {module: source text}."""
  modules = dict.fromkeys(sources, "")
  return {m: imports_of(ast.parse(text), m, modules) for m, text in sources.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
  """One import cycle as [a, b, ..., a], or None."""
  state = {}  # 1: on the current path, 2: done

  def visit(module, path):
    state[module] = 1
    for target in sorted(graph.get(module, ())):
      if state.get(target) == 1:
        return path[path.index(target):] + [target]
      if target not in state:
        cycle = visit(target, path + [target])
        if cycle:
          return cycle
    state[module] = 2
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [module])
      if cycle:
        return cycle
  return None


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
  rank = {layer: i for i, layer in enumerate(LAYERS)}
  return ["%s (%s) imports %s (%s)" % (m, layer_of(m), t, layer_of(t))
          for m in sorted(graph) for t in sorted(graph[m])
          if rank[layer_of(t)] < rank[layer_of(m)]]


def flag_users(sources: Dict[str, str]) -> List[str]:
  allowed = ("scripts", "flag definitions")
  return ["%s line %s" % (m, ", ".join(map(str, lines))) for m, text in sorted(sources.items())
          if layer_of(m) not in allowed and (lines := touches_flags(ast.parse(text)))]


@pytest.fixture(scope="module")
def repository_sources():
  sources = {}
  for module, path in python_files().items():
    with open(path, encoding="utf-8") as f:
      sources[module] = f.read()
  return sources


def test_the_checks_see_the_whole_repository(repository_sources):
  graph = import_graph(repository_sources)
  assert {"train", "willow.script_flags", "willow.configuration", "willow.training",
          "tests.test_layers", "benchmarks.flops"} <= set(graph)
  # A function-level import of a sibling (benchmarks/ put their own directory on sys.path).
  assert "benchmarks.flops" in graph["benchmarks.kernel_ceiling"]
  assert {"willow.script_flags", "willow.training", "willow.tf_env"} <= graph["train"]


def test_no_import_cycle(repository_sources):
  assert find_cycle(import_graph(repository_sources)) is None


def test_imports_go_down_the_layers(repository_sources):
  assert upward_imports(import_graph(repository_sources)) == []


def test_only_scripts_and_the_flag_module_touch_flags(repository_sources):
  assert flag_users(repository_sources) == []


def test_the_checks_catch_what_they_forbid():
  """The same checks on a made-up repository that breaks each rule."""
  sources = {
      "train": "from willow import training\n",
      "willow.script_flags": "FLAGS = None\n",
      # A cycle hidden in a function body, and a library module reaching up to the flags.
      "willow.checkpoints": "def f():\n  import willow.checkpoint_import\n",
      "willow.checkpoint_import": "from willow import checkpoints\n",
      "willow.training": "from willow import script_flags\nx = script_flags.FLAGS.seed\n",
      "readers": "from absl import flags\nflags.DEFINE_string('x', '', 'y')\n",
  }
  graph = import_graph(sources)
  assert find_cycle(graph) == ["willow.checkpoint_import", "willow.checkpoints",
                               "willow.checkpoint_import"]
  assert upward_imports(graph) == [
      "willow.training (library) imports willow.script_flags (flag definitions)"]
  assert flag_users(sources) == ["readers line 2", "willow.training line 2"]
