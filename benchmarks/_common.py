"""Helpers shared by the benchmarks: machine description, timing, the reference's import, tables.

Nothing here is a benchmark by itself. The PyTorch reference (TIML-Group/Mode-Connectivity-
Unlearning) is never copied into this repository: ``load_reference(path)`` imports its
``curves.py`` and ``models/preresnet.py`` from a checkout the caller names (``--reference``).
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# The machine.


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def usable_cpus() -> int:
  """CPUs this process may run on (its affinity mask), not the host's total."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _git_revision() -> dict:
  def git(*args):
    out = subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True,
                         timeout=10)
    return out.stdout.strip() if out.returncode == 0 else None
  try:
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}
  return {"commit": head, "dirty": None if dirty is None else bool(dirty)}


def machine_info(with_torch: bool = False) -> dict:
  """Versions, devices and date: the context every benchmark record carries."""
  import flax
  import jax
  import optax
  devices = jax.devices()
  info = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "python": platform.python_version(),
      "platform": platform.platform(),
      "cpu_model": cpu_model(),
      "cpu_count": usable_cpus(),
      "host_cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
      "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
      "git": _git_revision(),
  }
  if with_torch:
    import torch
    info["torch"] = torch.__version__
    info["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else "cpu")
    info["torch_threads"] = torch.get_num_threads()
    info["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
  return info


def command_line(script: str, argv: Sequence[str] | None) -> str:
  """The command that reproduces a run: ``python3 benchmarks/<script> <args>``."""
  import shlex
  args = list(sys.argv[1:] if argv is None else argv)
  env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("XLA_FLAGS", "JAX_PLATFORMS")
         if os.environ.get(k)]
  return " ".join(env + ["python3", os.path.relpath(os.path.abspath(script), REPO_ROOT)]
                  + [shlex.quote(a) for a in args])


# ---------------------------------------------------------------------------------------------
# Timing.


def time_calls(fn: Callable[[], Any], steps: int, warmup: int,
               sync: Callable[[Any], Any]) -> dict:
  """Wall seconds of ``steps`` calls of ``fn`` after ``warmup`` untimed ones.

  Each call is timed on its own, from dispatch to ``sync(result)`` returning (for JAX
  ``jax.block_until_ready``, for torch a CUDA synchronize), so asynchronous dispatch cannot
  hide work. Returns the first warm-up call's time (which includes compilation) separately.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  first = None
  for i in range(max(warmup, 0)):
    start = time.perf_counter()
    sync(fn())
    if i == 0:
      first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
  return {"first_call_s": first, "times_s": times, "median_s": statistics.median(times),
          "min_s": min(times), "mean_s": statistics.fmean(times)}


def throughput_row(name: str, timing: dict, images_per_call: int, steps_per_call: int = 1,
                   **extra) -> dict:
  """A result row: images/s from the median time of one call of ``images_per_call`` images."""
  median = timing["median_s"]
  return {
      "name": name,
      "images_per_s": images_per_call / median,
      "ms_per_step": 1e3 * median / steps_per_call,
      "min_ms_per_step": 1e3 * timing["min_s"] / steps_per_call,
      "first_call_s": timing["first_call_s"],
      "steps_timed": len(timing["times_s"]),
      "steps_per_call": steps_per_call,
      "times_s": timing["times_s"],
      **extra,
  }


# ---------------------------------------------------------------------------------------------
# Arguments.


def parse_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(x) for x in text.split(","))
  except ValueError as e:
    raise ValueError(f"image shape must look like 32,32,3 (H,W,C), got {text!r}") from e
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image shape must be three positive integers H,W,C, got {text!r}")
  return shape


def parse_list(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def check_precision(precision: str) -> None:
  """Raises ValueError unless ``precision`` names a precision (``models.COMPUTE_DTYPES``)."""
  from mcu_jax.models import compute_dtype
  compute_dtype(precision)


def precision_apply(module, precision: str):
  """The ``Apply`` of a Linen ``module`` in a precision: fp32, or bf16 compute over fp32 params
  (``models.with_precision``)."""
  from mcu_jax import models
  return models.with_precision(models.from_linen(module), precision)


# ---------------------------------------------------------------------------------------------
# The PyTorch reference.


def preresnet_depth(model: str) -> int:
  """Depth of a ``preresnet<depth>`` model name; other models have no reference equivalent."""
  if not model.startswith("preresnet") or not model[len("preresnet"):].isdigit():
    raise ValueError(f"the reference comparison needs a PreResNet model (preresnet20, "
                     f"preresnet56, preresnet110, preresnet164), got {model!r}")
  return int(model[len("preresnet"):])


def load_reference(path: str) -> types.SimpleNamespace:
  """The reference's ``curves`` module and ``models/preresnet.py``, imported from ``path``.

  ``models/__init__.py`` also imports its ViT (which needs timm), and ``utils.py`` imports
  ``unlearn.py``, which reads a config file that is not in the repository at import time; so
  only ``curves.py`` (on sys.path, as preresnet.py does ``import curves``) and
  ``models/preresnet.py`` (by file) are imported. The loops of ``utils.update_bn``,
  ``utils.test``, ``unlearn.training_step_dynamic`` and ``generate_weight_mask.py`` are
  re-enacted by the benchmarks over these modules.
  """
  path = os.path.abspath(os.path.expanduser(path))
  curves_file = os.path.join(path, "curves.py")
  preresnet_file = os.path.join(path, "models", "preresnet.py")
  for f in (curves_file, preresnet_file):
    if not os.path.isfile(f):
      raise FileNotFoundError(f"{f} not found: --reference must point to a checkout of "
                              "TIML-Group/Mode-Connectivity-Unlearning")
  if path not in sys.path:
    sys.path.insert(0, path)
  import curves  # noqa: F401  (the reference's)
  if os.path.dirname(os.path.abspath(curves.__file__)) != path:
    raise ImportError(f"'curves' resolves to {curves.__file__}, not the reference at {path}")
  spec = importlib.util.spec_from_file_location("mcu_reference_preresnet", preresnet_file)
  preresnet = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(preresnet)
  return types.SimpleNamespace(path=path, curves=curves, preresnet=preresnet)


def share_accelerator_with_torch() -> None:
  """Before JAX starts its backend: let it take at most 45% of an accelerator's memory (not
  the default 75%), so that the reference's torch, run in the same process, has room. No
  effect once the backend is up, or when the user set the variable."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")


def torch_setup(threads: int | None = None):
  """(torch, device): CUDA when torch sees it, else the CPU with ``threads`` threads (default:
  this process's usable CPUs, as XLA uses on the CPU)."""
  import torch
  if torch.cuda.is_available():
    return torch, torch.device("cuda")
  torch.set_num_threads(threads or usable_cpus())
  return torch, torch.device("cpu")


def torch_sync(torch, device) -> Callable[[Any], None]:
  def sync(_):
    if device.type == "cuda":
      torch.cuda.synchronize(device)
  return sync


def reference_accuracy(torch, logits, labels):
  """The reference's ``utils.accuracy`` (percent; the .item() is a host sync, as there)."""
  _, preds = torch.max(logits, dim=1)
  return torch.tensor(torch.sum(preds == labels).item() / len(preds)) * 100


def reference_dynamic_loss(torch, F, out, labels, is_forget, forget_target, retain_target):
  """``unlearn.training_step_dynamic`` after the forward: CE_r - beta * CE_f, adaptive beta."""
  retain_mask, forget_mask = is_forget == 0, is_forget == 1
  loss_retain = F.cross_entropy(out[retain_mask], labels[retain_mask])
  retain_acc = reference_accuracy(torch, out[retain_mask], labels[retain_mask])
  loss_forget = F.cross_entropy(out[forget_mask], labels[forget_mask])
  if int(forget_mask.sum()) != 0:
    forget_acc = reference_accuracy(torch, out[forget_mask], labels[forget_mask])
  else:
    forget_acc = forget_target
  if forget_acc <= forget_target:
    beta = 0
  elif (forget_acc - forget_target) / forget_target < (retain_acc - retain_target) / retain_target:
    beta = 0.01
  else:
    beta = 0.5
  return loss_retain - beta * loss_forget


def reference_curve_net(ref, num_classes: int, depth: int, device):
  """``CurveNet(num_classes, Bezier, PreResNet.curve, num_bends=3, fix_start, fix_end)``."""
  model = ref.curves.CurveNet(num_classes, ref.curves.Bezier, ref.preresnet.PreResNet110.curve,
                              num_bends=3, fix_start=True, fix_end=True,
                              architecture_kwargs={"depth": depth})
  return model.to(device)


def reference_base_net(ref, num_classes: int, depth: int, device):
  return ref.preresnet.PreResNet110.base(num_classes, depth=depth).to(device)


# ---------------------------------------------------------------------------------------------
# Output.


def markdown_table(rows: Sequence[dict], columns: Iterable, floatfmt: str = ".4g") -> str:
  """``columns``: keys, or (key, header) pairs (mcu_jax.pipeline.report's table, 4 significant
  digits)."""
  from mcu_jax.pipeline import report
  return report.markdown_table(rows, list(columns), floatfmt).rstrip("\n")


def emit(record: dict, out: str | None) -> dict:
  """Writes ``record`` to ``out`` when given (saying so) and returns it."""
  if out:
    write_json(out, record)
    print("wrote", out)
  return record


def write_json(path: str, record: dict) -> None:
  """Atomic JSON write (mcu_jax.pipeline.report's: NumPy values allowed, NaN as null)."""
  from mcu_jax import io
  io.write_json(path, record)
