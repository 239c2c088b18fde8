"""metaopt: learned optimizers in JAX, as optax transforms.

Reproduces Andrychowicz et al., "Learning to learn by gradient descent by
gradient descent" (NIPS 2016). The public names, one per idea:

- the learned optimizer: :func:`learned_rule` (an optax transform) and its
  configuration :class:`LSTMConfig` / :class:`GroupedLSTMConfig`, or the
  per-parameter MLP rule family's :class:`MLPRuleConfig`;
- trained rules: :func:`save_meta_params`, :func:`load_meta_params`,
  :func:`load_pretrained`, :func:`list_pretrained`;
- meta-training: :func:`meta_train` with :class:`MetaTrainConfig` and its parts
  :class:`Truncation`, :class:`Objective`, :class:`Imitation`, :class:`Validation`;
  the meta-gradient estimators :class:`TruncatedBackprop` and :class:`PES`;
- runs of any optax transform: :func:`unroll`, :func:`loss_curves`.
"""

__version__ = "0.1.0"

from metaopt import checkpoint, data, problems
from metaopt.checkpoint import list_pretrained, load_meta_params, load_pretrained, save_meta_params
from metaopt.config import MetaTrainConfig
from metaopt.estimators import TruncatedBackprop
from metaopt.mlp_rule import MLPRuleConfig
from metaopt.networks import GroupedLSTMConfig, LSTMConfig, init_meta_params
from metaopt.objectives import Imitation, Objective
from metaopt.pes import PES
from metaopt.rule import learned_rule
from metaopt.trainer import MetaTrainingStopped, MetaTrainResult, meta_train
from metaopt.truncation import Truncation
from metaopt.unroll import init_unroll, loss_curves, unroll
from metaopt.validation import Validation

__all__ = [
    "checkpoint", "data", "GroupedLSTMConfig", "Imitation", "init_meta_params", "init_unroll",
    "learned_rule", "list_pretrained", "load_meta_params", "load_pretrained", "loss_curves",
    "LSTMConfig", "meta_train", "MetaTrainConfig", "MetaTrainingStopped", "MetaTrainResult",
    "MLPRuleConfig", "Objective", "PES", "problems", "save_meta_params", "Truncation",
    "TruncatedBackprop", "unroll", "Validation",
]
