"""Reference PyTorch checkpoints <-> this library's Flax params.

The MCU reference trains PreResNet-110/164 and VGG-16-BN in PyTorch. ``state_dict_to_flax``
turns such a ``state_dict`` into ``(params, {"batch_stats": ...})`` for the model registered
under the same name (``mcu_jax.models.get_model``), ``flax_to_state_dict`` goes back, and
``convert_file`` (the ``mcu-jax import-torch`` command) converts a ``.pt`` file to an orbax
checkpoint of ``{"params": ..., "model_state": ...}``, loadable with ``checkpoint.load_tree``.

Supported models: every ``preresnet<depth>``, ``vgg16_bn`` and ``resnet18`` (the key tables are
in the model files' docstrings; ``torch_key`` of each model file gives the key of a Flax leaf).

Layouts: conv ``weight`` (O, I, H, W) -> ``kernel`` (H, W, I, O); Linear ``weight`` (out, in)
-> ``kernel`` (in, out); BN ``weight`` -> ``scale``, ``running_mean``/``running_var`` ->
``batch_stats`` ``mean``/``var``; ``num_batches_tracked`` is ignored. A leading ``module.``
(``DataParallel``) is stripped. Every Flax leaf must be filled: missing keys, unexpected keys
and shape mismatches all raise one ``ValueError`` naming the keys and shapes.

**VGG-16-BN from the reference.** The reference's VGG forward skips half of each block's
modules (see ``mcu_jax.models.vgg``). Its checkpoints only reproduce the reference's logits
with ``get_model("vgg16_bn", num_classes, reference_forward=True)``;
``reference_model_kwargs(model_name)`` returns those options. The parameter tree is the same
in both modes, so the conversion does not depend on it. The reference's 64x64 inputs give a
classifier of 2048 inputs (512 channels x 2 x 2, flattened in torch's (C, H, W) order, as
``vgg.py`` does); the input size is inferred from that width unless ``input_shape`` is given.

**Curve checkpoints.** ``bend=i`` extracts bend ``i`` of a reference ``CurveNet`` state dict:
keys ``net.<plain path>.weight_{i}`` / ``bias_{i}``, the PreResNet downsample as
``downsample.weight_{i}`` (no ``.0``), the VGG classifier as ``fc1``/``fc2``/``fc3``. Curve BN
layers hold one set of running statistics shared by all bends; those are returned. The curve's
own buffers (``coeff_layer.*``) and the other bends' tensors are ignored.

torch is imported only to read ``.pt`` files (``pip install 'mcu_jax[torch]'``); state dicts of
numpy arrays, and ``.npz`` files, need no torch. A SIGINT or SIGTERM recorded by
``mcu_jax.runtime.signals`` stops the conversion between tensors, before anything is written.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.errors import InvalidArgument, MissingDependency, MissingFileError
from mcu_jax.models import get_model, init_model, preresnet, resnet, vgg
from mcu_jax.runtime import checkpoint, signals
from mcu_jax.typing import PyTree

_IGNORED_SUFFIXES = (".num_batches_tracked",)
_CURVE_FC = {"classifier.1.": "fc1.", "classifier.4.": "fc2.", "classifier.6.": "fc3."}
_MAX_LISTED = 20


def reference_model_kwargs(model_name: str) -> dict:
  """The ``get_model`` options that reproduce the reference's forward for its checkpoints."""
  return {"reference_forward": True} if model_name.startswith("vgg") else {}


def _model_family(model_name: str, num_classes: int = 10):
  """(module, torch_key function, stem conv key) of a registered model name."""
  module = get_model(model_name, num_classes)
  if isinstance(module, preresnet.PreResNet):
    return module, preresnet.torch_key, "conv1.weight"
  if isinstance(module, vgg.VGG):
    return module, vgg.torch_key, "layer_blocks.0.0.weight"
  if isinstance(module, resnet.ResNet):
    return module, resnet.torch_key, "conv1.weight"
  raise InvalidArgument(f"model {model_name!r} has no PyTorch counterpart; torch import supports "
                   "preresnet<depth>, vgg16_bn and resnet18")


def _to_numpy(key: str, value) -> np.ndarray:
  """A torch tensor or array-like as a numpy array (floating types as float32)."""
  if hasattr(value, "detach"):  # a torch.Tensor; no torch import needed
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  try:
    array = np.asarray(value)
  except Exception as e:
    raise InvalidArgument(
      f"state_dict entry {key!r} is not an array: {type(value).__name__}") from e
  if array.dtype == object:
    raise InvalidArgument(f"state_dict entry {key!r} is not an array: {type(value).__name__}")
  return array


def _strip_prefix(keys: list[str], prefix: str) -> dict[str, str]:
  """{stripped: original}; ``prefix`` is removed only when every key carries it."""
  if keys and all(k.startswith(prefix) for k in keys):
    return {k[len(prefix):]: k for k in keys}
  return {k: k for k in keys}


def _curve_key(plain: str, bend: int) -> str:
  """The reference CurveNet's key (without ``net.``) of a plain model's key, for ``bend``."""
  key = plain.replace(".downsample.0.", ".downsample.")
  for old, new in _CURVE_FC.items():
    if key.startswith(old):
      key = new + key[len(old):]
  head, _, leaf = key.rpartition(".")
  if leaf in ("weight", "bias"):
    leaf = f"{leaf}_{bend}"
  return f"{head}.{leaf}"


def _is_ignored(key: str, bend: int | None) -> bool:
  if key.endswith(_IGNORED_SUFFIXES):
    return True
  if bend is not None:
    # the Bezier/PolyChain coefficient buffers, and the other bends' tensors
    return key.startswith("coeff_layer.") or re.search(r"\.(weight|bias)_\d+$", key) is not None
  return False


def _infer_input_shape(module, arrays: Mapping[str, np.ndarray], lookup: Callable[[str], str],
                       stem_key: str) -> tuple[int, int, int, int]:
  """(1, H, W, C): C from the stem conv, H = W from the VGG classifier's width (else 32)."""
  channels, size = 3, 32
  stem = arrays.get(lookup(stem_key))
  if stem is not None and stem.ndim == 4:
    channels = int(stem.shape[1])
  if isinstance(module, vgg.VGG):
    fc = arrays.get(lookup("classifier.1.weight"))
    last = int(module.config[-1][-1])
    if fc is not None and fc.ndim == 2 and fc.shape[1] % last == 0:
      side = math.isqrt(fc.shape[1] // last)
      if side >= 1 and side * side * last == fc.shape[1]:
        size = 32 * side
  return (1, size, size, channels)


def _convert_leaf(leaf_name: str, array: np.ndarray) -> np.ndarray:
  if leaf_name == "kernel":
    if array.ndim == 4:
      return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if array.ndim == 2:
      return array.T                       # (out, in) -> (in, out)
  return array


def _unconvert_leaf(leaf_name: str, array: np.ndarray) -> np.ndarray:
  if leaf_name == "kernel":
    if array.ndim == 4:
      return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if array.ndim == 2:
      return array.T
  return array


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(p, "key", p)) for p in path)


def _listing(items: list[str]) -> str:
  shown = items[:_MAX_LISTED]
  more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
  return ", ".join(shown) + more


def state_dict_to_flax(state_dict: Mapping[str, Any], model_name: str, num_classes: int,
                       input_shape: tuple[int, ...] | None = None, *, bend: int | None = None
                       ) -> tuple[PyTree, PyTree]:
  """(params, {"batch_stats": ...}) of ``get_model(model_name, num_classes)`` from a torch
  ``state_dict`` (values: torch tensors or numpy arrays).

  ``input_shape`` (NHWC, batch included) only matters for VGG, whose classifier width depends
  on it; by default it is inferred from the state dict (512 inputs: 32x32, 2048: 64x64).
  ``bend=i`` reads bend ``i`` of a reference CurveNet state dict (see the module docstring).
  Raises ``ValueError`` naming every missing key, unexpected key and shape mismatch.
  """
  if not isinstance(state_dict, Mapping):
    raise InvalidArgument(f"a state_dict must be a mapping of names to tensors, got "
                     f"{type(state_dict).__name__}")
  if bend is not None and (not isinstance(bend, int) or bend < 0):
    raise InvalidArgument(f"bend must be a non-negative integer, got {bend!r}")
  module, torch_key, stem_key = _model_family(model_name, num_classes)

  names = _strip_prefix([str(k) for k in state_dict], "module.")
  if bend is not None:
    names = {(k[4:] if k.startswith("net.") else k): original for k, original in names.items()}
    if not any(re.search(r"\.(weight|bias)_\d+$", k) for k in names):
      raise InvalidArgument("bend= was given but the state_dict has no curve keys "
                       "('net.<path>.weight_<bend>'); is it a plain model's state_dict?")
  arrays = {k: _to_numpy(original, state_dict[original]) for k, original in names.items()}
  lookup = (lambda key: key) if bend is None else (lambda key: _curve_key(key, bend))

  if input_shape is None:
    input_shape = _infer_input_shape(module, arrays, lookup, stem_key)
  abstract = jax.eval_shape(lambda: init_model(module, jax.random.PRNGKey(0),
                                               tuple(input_shape)))
  abstract_tree = {"params": abstract[0], **abstract[1]}

  used: set[str] = set()
  missing: list[str] = []
  mismatched: list[str] = []

  def fill(path, like):
    names_ = _path_names(path)
    key = lookup(torch_key(names_[1:]))  # names_[0] is the collection
    signals.check(f"converting {key}")
    if key not in arrays:
      missing.append(f"{key} (expected shape {tuple(_unconvert_shape(names_[-1], like.shape))})")
      return None
    used.add(key)
    array = arrays[key]
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
      mismatched.append(f"{key}: dtype {array.dtype} is not numeric")
      return None
    converted = _convert_leaf(names_[-1], array)
    if tuple(converted.shape) != tuple(like.shape):
      expected = _unconvert_shape(names_[-1], like.shape)
      mismatched.append(f"{key}: shape {tuple(array.shape)} in the checkpoint, expected "
                        f"{tuple(expected)} for {model_name} with {num_classes} classes and "
                        f"input {tuple(input_shape)}")
      return None
    return jnp.asarray(np.ascontiguousarray(converted, dtype=like.dtype))

  tree = jax.tree_util.tree_map_with_path(fill, abstract_tree)
  unexpected = sorted(k for k in arrays if k not in used and not _is_ignored(k, bend))
  if missing or unexpected or mismatched:
    problems = []
    if missing:
      problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
      problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
      problems.append(f"mismatched ({len(mismatched)}): {_listing(mismatched)}")
    what = model_name if bend is None else f"bend {bend} of a {model_name} curve"
    raise InvalidArgument(f"state_dict does not match {what}: " + "; ".join(problems))
  params = tree.pop("params")
  return params, tree


def _unconvert_shape(leaf_name: str, shape) -> tuple[int, ...]:
  """The torch shape of a Flax leaf's shape."""
  return tuple(_unconvert_leaf(leaf_name, np.empty(tuple(shape), np.int8)).shape)


def flax_to_state_dict(params: PyTree, model_state: PyTree, model_name: str,
                       num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
  """The reference model's torch ``state_dict`` (numpy float32 arrays) of Flax variables.

  ``model_state`` is ``{"batch_stats": ...}`` (or ``{}``). With ``num_batches_tracked``, every
  BN gets a ``num_batches_tracked`` of 0 so that ``load_state_dict(strict=True)`` accepts it.
  Load into torch with ``{k: torch.from_numpy(v) for k, v in sd.items()}``.
  """
  _, torch_key, _ = _model_family(model_name)
  out: dict[str, np.ndarray] = {}
  tree = {"params": params, **(model_state or {})}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = _path_names(path)
    key = torch_key(names[1:])
    array = np.asarray(jax.device_get(leaf))
    if np.issubdtype(array.dtype, np.floating):
      array = array.astype(np.float32)
    out[key] = np.ascontiguousarray(_unconvert_leaf(names[-1], array))
    if num_batches_tracked and names[0] == "batch_stats" and names[-1] == "mean":
      out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.zeros((), np.int64)
  return out


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
  """The state dict inside a loaded checkpoint (plain, or under 'state_dict'/'model_state')."""
  if isinstance(obj, Mapping):
    for wrapper in ("state_dict", "model_state", "model_state_dict"):
      if isinstance(obj.get(wrapper), Mapping):
        return obj[wrapper]
    return obj
  raise InvalidArgument(f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping of "
                        "names to tensors, possibly under 'state_dict' or 'model_state')")


def load_state_dict_file(path: str | os.PathLike) -> Mapping[str, Any]:
  """A torch ``state_dict`` from a ``.pt``/``.pth`` file (needs torch) or an ``.npz`` file.

  Reads with ``torch.load(map_location="cpu", weights_only=True)``: no pickled code runs.
  Raises ``FileNotFoundError`` or ``ValueError``, naming the file.
  """
  path = Path(path)
  if not path.is_file():
    raise MissingFileError(f"checkpoint file {path} does not exist")
  if path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    except Exception as e:
      raise InvalidArgument(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
  try:
    import torch
  except ImportError as e:
    raise MissingDependency(f"reading the PyTorch checkpoint {path} needs torch: "
                      "pip install 'mcu_jax[torch]'") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle, zip and weights_only errors all mean "not a usable file"
    raise InvalidArgument(f"cannot read PyTorch checkpoint {path}: {type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}") from e
  return _unwrap(obj, path)


def _check_writable_parent(out: Path) -> None:
  """Fails at once, before any conversion, if ``out`` cannot be created: its nearest existing
  ancestor must be a writable directory."""
  ancestor = out.parent
  while not ancestor.exists():
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    raise InvalidArgument(f"cannot create {out}: {ancestor} is a file, not a directory")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise InvalidArgument(f"cannot create {out}: {ancestor} is not writable")


def convert_file(path: str | os.PathLike, model_name: str, num_classes: int,
                 out_dir: str | os.PathLike, *, input_shape: tuple[int, ...] | None = None,
                 bend: int | None = None, force: bool = False) -> str:
  """Converts a reference checkpoint file and saves ``{"params", "model_state"}`` to
  ``out_dir`` with ``checkpoint.save_tree``; returns ``out_dir``'s absolute path.

  Nothing is written unless the conversion succeeds, and orbax writes atomically. An existing
  ``out_dir`` is an error unless ``force``. Errors name the file.
  """
  path, out = Path(path), Path(out_dir).absolute()
  if out.exists() and not force:
    raise InvalidArgument(f"output {out} already exists (pass force=True, or --force on the "
                     "command line, to overwrite)")
  _check_writable_parent(out)
  state_dict = load_state_dict_file(path)
  signals.check(f"reading {path}")
  try:
    params, model_state = state_dict_to_flax(state_dict, model_name, num_classes,
                                             input_shape, bend=bend)
  except ValueError as e:
    raise InvalidArgument(f"cannot convert {path}: {e}") from e
  signals.check(f"converting {path}")
  checkpoint.save_tree(out, {"params": params, "model_state": model_state}, force=force)
  return str(out)
