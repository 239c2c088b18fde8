import gzip
import pathlib

import numpy as np
import pytest

from metaopt.data import DATA_DIR_ENV, DataError, load_dataset

from conftest import SHARED_DATA as SHARED

needs_data = pytest.mark.skipif(not (SHARED / "mnist").is_dir(),
                                reason=f"original MNIST files not found under {SHARED}")
MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _idx(array: np.ndarray) -> bytes:
  header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(
      d.to_bytes(4, "big") for d in array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1)


def _mnist_dir(tmp_path, replace: dict[str, bytes | None]) -> pathlib.Path:
  folder = tmp_path / "mnist"
  folder.mkdir()
  for name in MNIST_FILES:
    if name in replace:
      if replace[name] is not None:
        (folder / name).write_bytes(replace[name])
    else:
      (folder / name).symlink_to(SHARED / "mnist" / name)
  return tmp_path


@needs_data
def test_mnist_from_the_original_files():
  ds = load_dataset("mnist", SHARED)
  assert ds.train_images.shape == (60000, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (10000, 28, 28, 1)
  assert ds.train_labels.dtype == np.int32
  assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9
  np.testing.assert_array_equal(np.bincount(ds.test_labels),
                                [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
  assert int(ds.train_images.sum(dtype=np.int64)) == 1567298545  # shared/data/README.md


@needs_data
def test_missing_file_names_the_exact_path(tmp_path):
  root = _mnist_dir(tmp_path, {"t10k-labels-idx1-ubyte.gz": None})
  missing = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
  with pytest.raises(DataError, match=f"missing file {missing}"):
    load_dataset("mnist", root)


@needs_data
def test_truncated_file_is_detected(tmp_path):
  good = (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
  root = _mnist_dir(tmp_path, {"t10k-images-idx3-ubyte.gz": good[: len(good) // 2]})
  with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
    load_dataset("mnist", root)
  raw = gzip.decompress(good)
  (tmp_path / "b").mkdir()
  root2 = _mnist_dir(tmp_path / "b", {"t10k-images-idx3-ubyte.gz": gzip.compress(raw[:-784])})
  with pytest.raises(DataError, match="truncated or not the original"):
    load_dataset("mnist", root2)


@needs_data
def test_labels_out_of_range_are_rejected(tmp_path):
  labels = np.zeros(10000, np.uint8)
  labels[17] = 12
  root = _mnist_dir(tmp_path, {"t10k-labels-idx1-ubyte.gz": _idx(labels)})
  with pytest.raises(DataError, match=r"test labels span \[0, 12\], outside \[0, 9\]"):
    load_dataset("mnist", root)


@needs_data
def test_wrong_image_shape_is_rejected(tmp_path):
  root = _mnist_dir(tmp_path, {"t10k-images-idx3-ubyte.gz": _idx(np.zeros((10000, 27, 27)))})
  with pytest.raises(DataError, match=r"test images have shape \(27, 27\), expected \(28, 28\)"):
    load_dataset("mnist", root)


def test_unknown_dataset_and_no_directory(monkeypatch):
  with pytest.raises(ValueError, match="unknown data set 'svhn'"):
    load_dataset("svhn", "/nonexistent")
  monkeypatch.delenv(DATA_DIR_ENV, raising=False)
  with pytest.raises(DataError, match=f"no data directory: pass one or set {DATA_DIR_ENV}"):
    load_dataset("mnist", use_tfds=False)


@needs_data
def test_tensorflow_datasets_route_offline_from_the_original_files(tmp_path):
  pytest.importorskip("tensorflow",
                      reason="the tfds route needs tensorflow-cpu (pip install -e '.[data]')")
  ds = load_dataset("mnist", use_tfds=True, tfds_data_dir=str(tmp_path / "tfds"),
                    tfds_manual_dir=str(SHARED / "mnist"))
  local = load_dataset("mnist", SHARED)
  assert ds.train_images.shape == local.train_images.shape
  # tfds reorders the examples: compare the (image, label) pairs as sets.
  pairs = lambda images, labels: sorted(im.tobytes() + bytes([int(label)])
                                        for im, label in zip(images, labels))
  assert pairs(ds.test_images, ds.test_labels) == pairs(local.test_images, local.test_labels)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), np.bincount(local.train_labels))
  assert int(ds.train_images.sum(dtype=np.int64)) == int(local.train_images.sum(dtype=np.int64))
