"""requirements-gpu.txt is requirements.txt with TensorFlow's GPU build: no pin may drift."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The one line in which the two files differ on purpose.
TENSORFLOW_BUILD = {"requirements.txt": "tensorflow-cpu", "requirements-gpu.txt": "tensorflow"}


def read_pins(name):
  """{package: version} of a requirements file, comments and blank lines left out."""
  pins = {}
  with open(os.path.join(ROOT, name)) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if line:
        package, version = line.split("==")
        pins[package.strip().lower()] = version.strip()
  return pins


def test_gpu_requirements_pin_what_the_cpu_ones_pin_with_the_gpu_build():
  cpu, gpu = read_pins("requirements.txt"), read_pins("requirements-gpu.txt")
  assert cpu.pop(TENSORFLOW_BUILD["requirements.txt"]) == gpu.pop(
      TENSORFLOW_BUILD["requirements-gpu.txt"])
  assert gpu == cpu, ("requirements-gpu.txt must pin what requirements.txt pins (apart from the "
                      "TensorFlow build); add or change the same lines in both")


@pytest.mark.parametrize("name", sorted(TENSORFLOW_BUILD))
def test_each_file_installs_exactly_one_tensorflow_build(name):
  builds = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu"} & set(read_pins(name))
  assert builds == {TENSORFLOW_BUILD[name]}
