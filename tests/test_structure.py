"""The layout's rules, checked on the source: dependencies point one way.

- the packages of sampot_jax form layers (LAYERS, lowest first): a package imports only
  packages below it, never one above (function-level imports included);
- no import cycle among the project's modules;
- only main.py imports the tasks (its task table names them as strings), and only the
  training task imports the trainer;
- `sampot_jax/` holds at most 11 entries (the tree shows the design);
- configs import only ml_collections, other configs and `sampot_jax.runtime.settings` (which
  imports no JAX, TFDS or data reader: checked in a fresh interpreter);
- benchmarks never import tests; test modules import no other test module but `helpers`;
  the PyTorch reference (`reference/`) is not installed and nothing installed imports it.
"""
import ast
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sampot_jax", "ports", "configs", "benchmarks", "tests", "reference")
# sampot_jax's packages, lowest first: data, storage, report and runtime serve the models and
# the method; sam is the frozen model; sampot the method; regressor is trained on the masks the
# method sees; app is the web page over the method (given the models by its task); tasks put
# them together for main.py.
LAYERS = ("errors", "runtime", "storage", "report", "sam", "data", "sampot", "regressor", "app",
          "tasks")


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
  found = {"main": ROOT / "main.py"}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      found[module_name(path)] = path
  return found


def imports_of(path: Path, modules) -> set[str]:
  """Project modules imported anywhere in `path` ("from a import b" counts a.b if a module)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # "from a import b": the module a.b when it is one, else a itself.
      names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
               else node.module for alias in node.names]
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name:
        out.add(name)
  return out


def graph():
  modules = project_modules()
  return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(edges):
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(edges):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_no_import_cycle():
  edges = graph()
  assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_graph_sees_a_cycle():
  """The checker itself: a planted cycle is found."""
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def layer_of(module: str):
  """The LAYERS index of a sampot_jax module, None outside sampot_jax."""
  parts = module.split(".")
  if parts[0] != "sampot_jax" or len(parts) < 2:
    return None
  return LAYERS.index(parts[1])


def upward_imports(edges) -> list[tuple[str, str]]:
  """(importer, imported) pairs where a sampot_jax package imports one above it."""
  return sorted((m, d) for m, deps in edges.items() for d in deps
                if layer_of(m) is not None and layer_of(d) is not None
                and layer_of(d) > layer_of(m))


def test_every_package_has_a_layer():
  packages = {p.name for p in (ROOT / "sampot_jax").iterdir()
              if p.is_dir() and p.name != "__pycache__"}
  packages |= {p.stem for p in (ROOT / "sampot_jax").glob("*.py") if p.stem != "__init__"}
  assert packages == set(LAYERS), sorted(packages ^ set(LAYERS))


def test_layers_point_one_way():
  assert upward_imports(graph()) == []


def test_the_layer_check_sees_an_upward_import():
  """The checker itself: the model importing the method, or storage a task, is caught."""
  edges = {"sampot_jax.sam.predictor": {"sampot_jax.sampot.evolve"},
           "sampot_jax.storage.files": {"sampot_jax.tasks.common"},
           "sampot_jax.tasks.refine": {"sampot_jax.sam.predictor"}}
  assert upward_imports(edges) == [("sampot_jax.sam.predictor", "sampot_jax.sampot.evolve"),
                                   ("sampot_jax.storage.files", "sampot_jax.tasks.common")]


def test_only_main_imports_the_tasks():
  edges = graph()
  importers = sorted(m for m, deps in edges.items()
                     if any(d.startswith("sampot_jax.tasks") for d in deps)
                     and not m.startswith(("tests.", "sampot_jax.tasks")))
  assert importers == [], importers
  main = (ROOT / "main.py").read_text()
  tasks = sorted(p.stem for p in (ROOT / "sampot_jax" / "tasks").glob("*.py")
                 if p.stem not in ("__init__", "common"))
  for task in tasks:
    assert f'"sampot_jax.tasks.{task}:run"' in main, task


def test_only_the_training_task_imports_the_trainer():
  edges = graph()
  importers = sorted(m for m, deps in edges.items()
                     if "sampot_jax.regressor.train" in deps and not m.startswith("tests."))
  assert importers == ["sampot_jax.tasks.train_regressor"], importers


def test_the_trainer_is_only_the_training_loop():
  lines = (ROOT / "sampot_jax" / "regressor" / "train.py").read_text().count("\n")
  assert lines < 400, lines


def test_the_package_shows_the_design():
  tracked = {p.name for p in (ROOT / "sampot_jax").iterdir() if p.name != "__pycache__"}
  assert len(tracked) <= 11, sorted(tracked)


def test_the_reference_is_not_installed():
  setup = (ROOT / "setup.cfg").read_text()
  assert "reference" not in setup.split("[options.packages.find]")[1].split("[")[0]
  for name, deps in graph().items():
    if name.startswith(("sampot_jax", "ports")) or name == "main":
      assert not any(d.startswith("reference") for d in deps), name


def test_configs_are_plain_data():
  for name, deps in graph().items():
    if name.startswith("configs."):
      allowed = {d for d in deps if d.startswith("configs") or d in ("sampot_jax",
                                                                     "sampot_jax.runtime.settings",
                                                                     "sampot_jax.errors")}
      assert deps == allowed, (name, sorted(deps - allowed))


def test_reading_every_config_loads_no_jax_or_tfds():
  """Configs are plain data: importing all of them (and runtime.settings) in a fresh
  interpreter loads neither JAX nor TFDS nor the data readers."""
  code = ("import importlib, pathlib, sys\n"
          "for p in sorted(pathlib.Path('configs').glob('*.py')):\n"
          "  importlib.import_module('configs.' + p.stem).get_config()\n"
          "print(sorted(m for m in ('jax', 'tensorflow_datasets', 'sampot_jax.data', 'skimage')\n"
          "             if m in sys.modules))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_benchmarks_and_tests_keep_their_side():
  for name, deps in graph().items():
    if name.startswith("benchmarks."):
      assert not any(d.startswith("tests") for d in deps), name
    if name.startswith("tests.test_"):
      others = sorted(d for d in deps if d.startswith("tests.") and d not in (
          "tests.helpers", "tests.conftest"))
      assert others == [], (name, others)
