"""The package's layers: no module imports from a layer above its own (README, "Layout")."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mcu_jax"
LAYERS = ("low", "core", "inputs", "runtime", "face", "pipeline")


def _layer(module: str) -> str:
  parts = module.split(".")
  if len(parts) == 1:
    return "root"
  head = parts[1]
  if head in ("errors", "validation", "io", "typing"):
    return "low"
  if head in ("core", "runtime", "pipeline"):
    return head
  if head in ("models", "data", "preprocess"):
    return "inputs"
  return "face"


def _imports(path: Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mcu_jax"):
      if node.module == "mcu_jax":
        yield from (f"mcu_jax.{alias.name}" for alias in node.names)
      else:
        yield node.module
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith("mcu_jax"))


def _module(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_from_a_layer_above_its_own():
  upward = []
  for path in sorted(PACKAGE.rglob("*.py")):
    module = _module(path)
    if _layer(module) == "root":       # the package root re-exports the public API
      continue
    for target in _imports(path):
      if _layer(target) != "root" and LAYERS.index(_layer(target)) > LAYERS.index(_layer(module)):
        upward.append(f"{module} -> {target}")
  assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_check_sees_every_layer():
  seen = {_layer(_module(p)) for p in PACKAGE.rglob("*.py")}
  assert seen == set(LAYERS) | {"root"}
  assert _layer("mcu_jax.runtime.sweep") == "runtime" and _layer("mcu_jax.io") == "low"
