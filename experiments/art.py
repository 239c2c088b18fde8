"""The paper's section 3.4: Neural Art, trained at 64x64 on one style, tested at 128x128 on a new
one.

Content images: CIFAR-10 photographs upscaled (bilinear) to the problem's
resolution; meta-training, validation and baseline tuning use training images,
test runs use the CIFAR-10 *test* images (never used in meta-training). Styles
ship with scikit-image (``skimage.data``, no download): training style
``immunohistochemistry`` (a colour micrograph of stained tissue, its top-left
192x192 crop), new style ``brick`` (a grey brick-wall texture, its top-left
256x256 crop). Feature network: a fixed random-filter conv net (seeded), or
VGG-16 from ``$METAOPT_VGG16_WEIGHTS`` (see :mod:`metaopt.problems.features`).
Writes ``results/art/{summary.json, curves.png, grid.jpg, lstm.msgpack}``.
Run: ``make art`` (full) or ``QUICK=1 make art``.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np

from metaopt import command_line
from metaopt.baselines import BASELINES
from metaopt.checkpoint import load_meta_params
from metaopt.config import MetaTrainConfig
from metaopt.data import load_dataset
from metaopt.experiment import TEST_SET, ExperimentConfig, Variant
from metaopt.networks import LSTMConfig
from metaopt.problems.art import ArtFamily, resize_images
from metaopt.problems.features import random_features, vgg16_from_npz
from metaopt.rule import learned_rule
from metaopt.truncation import Truncation
from metaopt.unroll import jitted_loss_curves, sample_tasks
from metaopt.validation import Validation

NUM_TRAIN_CONTENTS = 2000
LOSS_WEIGHTS = dict(content_weight=1.0, style_weight=30.0, tv_weight=0.3)


def styles() -> dict[str, np.ndarray]:
  """The training and the new style image (uint8), from scikit-image's bundled data."""
  import skimage.data
  return {"train": skimage.data.immunohistochemistry()[:192, :192],
          "new": skimage.data.brick()[:256, :256]}


def feature_net():
  """VGG-16 when ``$METAOPT_VGG16_WEIGHTS`` names a weights file, else the random conv net."""
  path = os.environ.get("METAOPT_VGG16_WEIGHTS")
  return vgg16_from_npz(path, num_blocks=3) if path else random_features(0, (32, 64, 128))


def config(quick: bool = False, data_dir: str | None = None) -> ExperimentConfig:
  """The paper's art settings (128 steps, unrolls of 32); ``quick`` shrinks everything."""
  ds = load_dataset("cifar10", data_dir)
  net, style = feature_net(), styles()
  small, large = (16, 32) if quick else (64, 128)
  train_contents = ds.train_images[: 64 if quick else NUM_TRAIN_CONTENTS]
  art = lambda contents, style_image, size: ArtFamily.from_images(
      contents, style_image, net, size=size, **LOSS_WEIGHTS)
  train_family = art(train_contents, style["train"], small)
  steps = 16 if quick else 128
  lstm = LSTMConfig(hidden_sizes=(20, 20), preprocessing="log_sign", preprocess_p=10.0,
                    output_scale=0.1)
  train = MetaTrainConfig(
      truncation=Truncation(horizon=steps, unroll_length=8 if quick else 32), batch_size=2,
      num_meta_steps=4 if quick else 200, meta_learning_rate=3e-3, clip_norm=1.0,
      validation=Validation(every=2 if quick else 50, num_problems=2 if quick else 4,
                            collapse_factor=1.5))
  variants = (
      Variant("train_style_64", art(ds.test_images, style["train"], small), steps),
      Variant("new_style_128", art(ds.test_images, style["new"], large), steps, retune=True,
              tune_family=art(train_contents[:200], style["new"], large), reuse_tuned=False),
  )
  return ExperimentConfig(
      name="art", family=train_family, lstm=lstm, train=train, eval_steps=steps,
      variants=variants, num_test_problems=2 if quick else 12,
      num_tune_problems=2 if quick else 3, lr_grid=(1e-3, 1e-2, 1e-1, 1.0),
      info={"feature_network": net.name, "loss_weights": LOSS_WEIGHTS,
            "styles": {"train_style_64": "skimage.data.immunohistochemistry()[:192, :192]",
                       "new_style_128": "skimage.data.brick()[:256, :256]"},
            "contents": "CIFAR-10 training images 0.. (meta-training, tuning), test images "
                        "(test runs), bilinear upscaling"})


def picture_grid(cfg: ExperimentConfig, summary: dict, phi, path: pathlib.Path,
                 num_images: int = 3) -> None:
  """Rows: content | style | LSTM result | best baseline result, for each variant's first test
  runs."""
  import PIL.Image
  rows, style_images = [], styles()
  for variant, style in zip(cfg.all_variants(), (style_images["train"], style_images["new"])):
    opts = summary["variants"][variant.name]["optimizers"]
    best = min((n for n in opts if n in BASELINES or n.removesuffix("_retuned") in BASELINES),
               key=lambda n: (np.inf if opts[n]["final_loss_mean"] is None
                              else opts[n]["final_loss_mean"]))
    test_key = jax.random.fold_in(jax.random.key(cfg.seed), TEST_SET)
    tasks, keys = sample_tasks(variant.family, test_key, cfg.num_test_problems)
    num = min(num_images, cfg.num_test_problems)
    tasks, keys = jax.tree.map(lambda x: x[:num], (tasks, keys))
    run = lambda make, args: np.asarray(jitted_loss_curves(make, variant.family, tasks, keys,
                                                           variant.steps, args)[1][0])
    lstm = run(learned_rule, (phi, cfg.lstm))
    base = run(BASELINES[best.removesuffix("_retuned")],
               (opts[best]["hyperparameters"]["learning_rate"],))
    size = variant.family.contents.shape[1]
    style_tile = resize_images(style[None], size)[0] / 255.0
    for i in range(num):
      tiles = [np.asarray(tasks.content[i]), style_tile, lstm[i], base[i]]
      tiles = [resize_images((np.clip(t, 0, 1)[None] * 255).astype(np.uint8), 128)[0]
               for t in tiles]
      rows.append(np.concatenate(tiles, axis=1))
    print(f"picture grid {variant.name}: content | style | lstm | {best}")
  PIL.Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=90)


def write_grid(cfg: ExperimentConfig, summary: dict, out: pathlib.Path) -> None:
  """``grid.jpg`` from the trained rule saved in ``out``."""
  phi, _, _ = load_meta_params(out / "lstm.msgpack", cfg.lstm)
  picture_grid(cfg, summary, phi, out / "grid.jpg")
  print(f"wrote {out / 'grid.jpg'}")


def main(argv=None) -> dict:
  return command_line.main("art", config, argv, __doc__, data=True, after=write_grid)


if __name__ == "__main__":
  main()
