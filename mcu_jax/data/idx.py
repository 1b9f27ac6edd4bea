"""IDX files, the MNIST format: parse, read and write one file, load a directory of them.

An IDX file is two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
uint32 sizes, then the values, big-endian, row-major; files may be gzipped. ``load_idx_dir``
reads the four files of an MNIST-style data set (MNIST, Fashion-MNIST, KMNIST, ...).
"""
from __future__ import annotations

import gzip
import os
import zipfile

import numpy as np

from mcu_jax.data.datasets import Dataset, TrainTest
from mcu_jax.errors import DataFormatError, InvalidArgument, MissingFileError

# IDX type codes (third byte of the magic number) and the big-endian dtypes they stand for.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class IdxFormatError(DataFormatError):
  """A file that is not a well-formed IDX file (the message names the file)."""


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
  """Decodes the bytes of one (uncompressed) IDX file into an array of native byte order.

  Layout: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
  uint32 sizes, then the values, big-endian, row-major.
  """
  if len(raw) < 4:
    raise IdxFormatError(f"{source}: {len(raw)} bytes is too short for an IDX header")
  if raw[0] != 0 or raw[1] != 0:
    raise IdxFormatError(f"{source}: bad IDX magic number {raw[:4].hex()} "
                         "(the first two bytes must be zero)")
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise IdxFormatError(f"{source}: unknown IDX type code 0x{code:02x} "
                         f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
  if ndim == 0:
    raise IdxFormatError(f"{source}: IDX header declares zero dimensions")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise IdxFormatError(f"{source}: truncated IDX header ({len(raw)} bytes, {ndim} "
                         f"dimensions need {header})")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
  dtype = np.dtype(_IDX_DTYPES[code])
  expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) != expected:
    raise IdxFormatError(f"{source}: IDX header declares shape {dims} of {dtype.str} "
                         f"({expected} bytes with the header) but the file has {len(raw)} bytes")
  values = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file, gzipped (detected by its magic bytes) or not."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise MissingFileError(f"IDX file {path} does not exist") from None
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
      raise IdxFormatError(f"{path}: corrupt gzip data ({e})") from None
  return parse_idx(raw, path)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); for tests/tools."""
  array = np.asarray(array)
  codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
  dtype = array.dtype.newbyteorder("=")
  if dtype not in codes:
    raise InvalidArgument(f"IDX cannot store dtype {array.dtype}")
  raw = (bytes([0, 0, codes[dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
         + array.astype(_IDX_DTYPES[codes[dtype]]).tobytes())
  path = os.fspath(path)
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if path.endswith(".gz") else raw)


def _find_idx_file(directory: str, stem: str) -> str:
  """``stem`` or its variants (``.gz``, ``train-images.idx3-ubyte``) inside ``directory``."""
  dotted = stem.replace("-idx", ".idx")
  candidates = [stem, stem + ".gz", dotted, dotted + ".gz"]
  for candidate in candidates:
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  raise MissingFileError(f"IDX directory {directory} has no {stem}[.gz] "
                          f"(looked for {', '.join(candidates)})")


def load_idx_dir(directory: str | os.PathLike, name: str | None = None) -> TrainTest:
  """A train/test pair from a directory of MNIST-format IDX files.

  Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
  and ``t10k-labels-idx1-ubyte``, each optionally ``.gz``. Images are (N, H, W) or
  (N, H, W, C) uint8; ``num_classes`` is one more than the largest label.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise MissingFileError(f"IDX dataset directory {directory} does not exist")
  name = name or os.path.basename(os.path.normpath(directory)).replace("-", "_")
  arrays = {}
  for (part, kind), stem in _IDX_FILES.items():
    path = _find_idx_file(directory, stem)
    values = read_idx(path)
    if kind == "images":
      if values.dtype != np.uint8 or values.ndim not in (3, 4):
        raise IdxFormatError(f"{path}: images must be uint8 of rank 3 or 4, got "
                             f"{values.dtype} {values.shape}")
      values = values[..., None] if values.ndim == 3 else values
    else:
      if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise IdxFormatError(f"{path}: labels must be a 1-D integer array, got "
                             f"{values.dtype} {values.shape}")
      if values.size and values.min() < 0:
        raise IdxFormatError(f"{path}: negative label {values.min()}")
      values = values.astype(np.int32)
    arrays[part, kind] = (path, values)
  for part in ("train", "test"):
    (ipath, images), (lpath, labels) = arrays[part, "images"], arrays[part, "labels"]
    if images.shape[0] != labels.shape[0]:
      raise IdxFormatError(f"{ipath} has {images.shape[0]} images but {lpath} has "
                           f"{labels.shape[0]} labels")
  if arrays["train", "images"][1].shape[1:] != arrays["test", "images"][1].shape[1:]:
    raise IdxFormatError(f"{directory}: train images {arrays['train', 'images'][1].shape[1:]} "
                         f"and test images {arrays['test', 'images'][1].shape[1:]} differ")
  if len(arrays["train", "labels"][1]) == 0:
    raise IdxFormatError(f"{directory}: the training set is empty")
  num_classes = 1 + int(max(arrays[p, "labels"][1].max(initial=0) for p in ("train", "test")))
  return TrainTest(*(Dataset(f"{name}/{part}", arrays[part, "images"][1],
                             arrays[part, "labels"][1], num_classes)
                     for part in ("train", "test")))
