"""The layout's rules, checked on the source: dependencies point one way.

- no import cycle among the project's modules (function-level imports included);
- nothing imports the trainer (main.py names it in its task table, as a string);
- the core model (`sampot_jax/sam`) imports nothing of the project outside itself but the
  checkpoint reader (a model module owns its weight loading; porting lives in `ports/`);
- configs import only ml_collections, other configs and `sampot_jax.runtime.defaults`;
- benchmarks never import tests; test modules import no other test module but `helpers`.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sampot_jax", "ports", "configs", "benchmarks", "tests")


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


def test_nothing_imports_the_trainer():
  edges = graph()
  importers = sorted(m for m, deps in edges.items()
                     if "sampot_jax.regressor.train" in deps and not m.startswith("tests."))
  assert importers == [], importers
  main = (ROOT / "main.py").read_text()
  assert '"sampot_jax.regressor.train:run"' in main


def test_the_trainer_is_only_the_training_loop():
  lines = (ROOT / "sampot_jax" / "train_regressor.py").read_text().count("\n")
  assert lines < 400, lines


def test_the_model_depends_on_nothing_above_it():
  for name, deps in graph().items():
    if name.startswith("sampot_jax.sam"):
      outside = sorted(d for d in deps if d not in ("sampot_jax", "sampot_jax.storage.checkpoints")
                       and not d.startswith("sampot_jax.sam"))
      assert outside == [], (name, outside)


def test_configs_are_plain_data():
  for name, deps in graph().items():
    if name.startswith("configs."):
      allowed = {d for d in deps if d.startswith("configs") or d in ("sampot_jax",
                                                                     "sampot_jax.runtime.defaults")}
      assert deps == allowed, (name, sorted(deps - allowed))


def test_benchmarks_and_tests_keep_their_side():
  for name, deps in graph().items():
    if name.startswith("benchmarks."):
      assert not any(d.startswith("tests") for d in deps), name
    if name.startswith("tests.test_"):
      others = sorted(d for d in deps if d.startswith("tests.") and d not in (
          "tests.helpers", "tests.conftest"))
      assert others == [], (name, others)
