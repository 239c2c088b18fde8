"""Image classification data sets as numpy arrays: MNIST, Fashion-MNIST, CIFAR-10.

Sources, in order:

1. the original files in a local data directory (argument ``data_dir``, else
   the environment variable ``METAOPT_DATA_DIR``), read with numpy only::

     <data_dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
     <data_dir>/fashion_mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
     <data_dir>/cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin

2. otherwise tensorflow-datasets (``tfds.load(..., batch_size=-1)``), which
   downloads and caches the data (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import gzip
import os
import pathlib
from typing import NamedTuple

import numpy as np

DATA_DIR_ENV = "METAOPT_DATA_DIR"
DATASETS = ("mnist", "fashion_mnist", "cifar10")

_IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 60000),
    "train_labels": ("train-labels-idx1-ubyte.gz", 60000),
    "test_images": ("t10k-images-idx3-ubyte.gz", 10000),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 10000),
}
_CIFAR_RECORD = 1 + 32 * 32 * 3


class Dataset(NamedTuple):
  """uint8 images (N, H, W, C) and int32 labels (N,) for the train and test splits."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int


class DataError(ValueError):
  """A data file is missing, truncated or not what it should be."""


def data_dir(path: str | os.PathLike | None = None) -> pathlib.Path | None:
  """The local data directory: ``path``, else ``$METAOPT_DATA_DIR``, else None."""
  path = path or os.environ.get(DATA_DIR_ENV) or None
  return pathlib.Path(path) if path else None


def _read_idx(path: pathlib.Path, expected_count: int, ndim: int) -> np.ndarray:
  try:
    raw = gzip.decompress(path.read_bytes())
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f"{path} is not a readable gzip file ({e}); replace it with the original "
                    f"file of the same name") from e
  magic = int.from_bytes(raw[:4], "big")
  if magic != 0x800 + ndim:
    raise DataError(f"{path}: bad IDX magic number {magic:#x}, expected {0x800 + ndim:#x}")
  dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  body = raw[4 + 4 * ndim:]
  if dims[0] != expected_count or len(body) != int(np.prod(dims)):
    raise DataError(f"{path}: holds dims {dims} and {len(body)} data bytes; expected "
                    f"{expected_count} items (the file is truncated or not the original)")
  return np.frombuffer(body, np.uint8).reshape(dims)


def _load_idx_dataset(folder: pathlib.Path, name: str) -> Dataset:
  arrays = {}
  for field, (filename, count) in _IDX_FILES.items():
    path = folder / filename
    if not path.is_file():
      raise DataError(f"{name}: missing file {path}. Put the original {filename} (from the "
                      f"{name} distribution) there, or unset {DATA_DIR_ENV} to download with "
                      "tensorflow-datasets")
    arrays[field] = _read_idx(path, count, 3 if "images" in field else 1)
  for split in ("train", "test"):
    if arrays[f"{split}_images"].shape[1:] != (28, 28):
      raise DataError(f"{name}: {split} images have shape {arrays[f'{split}_images'].shape[1:]}, "
                      "expected (28, 28)")
  return _checked(Dataset(arrays["train_images"][..., None],
                          arrays["train_labels"].astype(np.int32),
                          arrays["test_images"][..., None], arrays["test_labels"].astype(np.int32),
                          10), name)


def _load_cifar10(folder: pathlib.Path) -> Dataset:
  def read(filenames, min_records):
    images, labels = [], []
    for filename in filenames:
      path = folder / filename
      if not path.is_file():
        raise DataError(f"cifar10: missing file {path}. Put the official binary batch "
                        f"{filename} (cifar-10-binary.tar.gz) there, or unset {DATA_DIR_ENV}")
      raw = np.frombuffer(path.read_bytes(), np.uint8)
      if raw.size == 0 or raw.size % _CIFAR_RECORD or raw.size // _CIFAR_RECORD < min_records:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number (>= {min_records}) of "
                        f"{_CIFAR_RECORD}-byte records; the file is truncated or not the original")
      records = raw.reshape(-1, _CIFAR_RECORD)
      labels.append(records[:, 0].astype(np.int32))
      images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(labels)

  train = read([f"data_batch_{i}.bin" for i in range(1, 6)], 10000)
  test = read(["test_batch.bin"], 1)  # the copy in shared/data holds only 1000 test images
  return _checked(Dataset(*train, *test, 10), "cifar10")


def _checked(ds: Dataset, name: str) -> Dataset:
  for split in ("train", "test"):
    images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
      raise DataError(f"{name}: {split} images {images.shape} {images.dtype} do not match "
                      f"{len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= ds.num_classes):
      raise DataError(f"{name}: {split} labels span [{labels.min()}, {labels.max()}], "
                      f"outside [0, {ds.num_classes - 1}]")
  return ds


def _load_tfds(name: str, tfds_data_dir: str | None, manual_dir: str | None) -> Dataset:
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"loading {name!r} without a local data directory needs "
                      "tensorflow-datasets: pip install 'metaopt[data]' (or set $METAOPT_DATA_DIR "
                      "to a folder of the original files)") from e

  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  splits = tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True,
                     data_dir=tfds_data_dir, download=True,
                     download_and_prepare_kwargs={"download_config": config} if config else None)
  (tr_x, tr_y), (te_x, te_y) = tfds.as_numpy(splits)
  return _checked(Dataset(tr_x.astype(np.uint8), tr_y.astype(np.int32),
                          te_x.astype(np.uint8), te_y.astype(np.int32), 10), name)


def load_dataset(name: str, path: str | os.PathLike | None = None, *,
                 use_tfds: bool | None = None, tfds_data_dir: str | None = None,
                 tfds_manual_dir: str | None = None) -> Dataset:
  """Load ``name`` ("mnist", "fashion_mnist" or "cifar10") as numpy arrays.

  Args:
    name: the data set.
    path: local data directory holding the original files (default ``$METAOPT_DATA_DIR``).
    use_tfds: force (True) or forbid (False) the tensorflow-datasets route;
      default: tfds only when no local data directory is set.
    tfds_data_dir: tfds cache folder (default tfds's own).
    tfds_manual_dir: a folder of the original files that tfds uses instead of
      downloading them (it still checks them against its registered checksums).

  Returns:
    A :class:`Dataset`; images are uint8 (N, H, W, C), labels int32 in [0, 10).

  Raises:
    DataError: a file is missing or corrupt (the message gives the exact path).

  Example:
    >>> ds = load_dataset("mnist", "../shared/data")
    >>> ds.train_images.shape
    (60000, 28, 28, 1)
  """
  if name not in DATASETS:
    raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
  folder = data_dir(path)
  if use_tfds or (use_tfds is None and folder is None):
    try:
      return _load_tfds(name, tfds_data_dir, manual_dir=tfds_manual_dir)
    except DataError:
      raise
    except Exception as e:  # tfds raises many types (network, missing TensorFlow, checksums)
      layout = ("mnist/ and fashion_mnist/: the four IDX .gz files; "
                "cifar10/cifar-10-batches-bin/: the binary batches")
      raise DataError(f"{name}: tensorflow-datasets could not provide it ({type(e).__name__}: "
                      f"{str(e)[:300]}). Without internet, set {DATA_DIR_ENV} (or pass a data "
                      f"directory) to a folder holding the original files ({layout})") from e
  if folder is None:
    raise DataError(f"no data directory: pass one or set {DATA_DIR_ENV}")
  if name == "cifar10":
    return _load_cifar10(folder / "cifar10" / "cifar-10-batches-bin")
  return _load_idx_dataset(folder / name, name)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in): row i averages the input cells under [i, i + 1) * n_in / n_out by overlap."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  cells = np.arange(n_in)[None, :]
  overlap = np.minimum(edges[1:, None], cells + 1) - np.maximum(edges[:-1, None], cells)
  return np.clip(overlap, 0, None) / (n_in / n_out)


def downsample(images: np.ndarray, size: int = 8, chunk: int = 8192) -> np.ndarray:
  """Area-average uint8 images (N, H, W, C) down to (N, size, size, C), rounded to uint8.

  Every output pixel is the mean of the input area it covers (input pixels cut by
  its border count by their overlap), as OpenCV's ``INTER_AREA``; ``H`` and ``W``
  need not be multiples of ``size`` (28 -> 8 averages 3.5 x 3.5 pixels).

  Args:
    images: uint8 (N, H, W, C).
    size: output height and width (at most ``min(H, W)``).
    chunk: images per vectorized block (bounds the float32 temporary).

  Returns:
    uint8 (N, size, size, C).

  Example:
    >>> small = downsample(load_dataset("mnist").train_images, 8)   # (60000, 8, 8, 1)
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"downsample needs uint8 (N, H, W, C), got {images.dtype} {images.shape}")
  if not 1 <= size <= min(images.shape[1:3]):
    raise ValueError(f"downsample size must be in [1, {min(images.shape[1:3])}], got {size}")
  a_h = _area_weights(images.shape[1], size).astype(np.float32)
  a_w = _area_weights(images.shape[2], size).astype(np.float32)
  out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
  for start in range(0, images.shape[0], chunk):
    x = images[start:start + chunk].astype(np.float32).transpose(0, 3, 1, 2)   # (B, C, H, W)
    y = a_h @ x @ a_w.T                                                        # (B, C, s, s)
    out[start:start + chunk] = np.clip(np.rint(y), 0, 255).transpose(0, 2, 3, 1)
  return out
