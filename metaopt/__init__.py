"""metaopt: learned optimizers in JAX, as optax transforms.

Reproduces Andrychowicz et al., "Learning to learn by gradient descent by
gradient descent" (NIPS 2016).
"""

from metaopt import checkpoint, data, problems
from metaopt.checkpoint import list_pretrained, load_meta_params, load_pretrained, save_meta_params
from metaopt.imitation import ImitationState, imitating
from metaopt.baselines import BASELINES, tune_baselines, tune_learning_rate
from metaopt.meta_train import MetaTrainConfig, MetaTrainResult, meta_train
from metaopt.networks import (CoordinatewiseLSTM, GroupedLSTMConfig, LSTMConfig, config_from_dict,
                               init_meta_params)
from metaopt.preprocess import adam_features, log_sign, preprocess
from metaopt.rule import AdamMoments, LearnedRuleState, init_lstm_state, learned_rule, learned_step
from metaopt.unroll import (UnrollState, init_unroll, jitted_loss_curves, loss_curves,
                            sample_tasks, unroll)

__version__ = "0.1.0"

__all__ = [
    "adam_features", "AdamMoments", "BASELINES", "checkpoint", "config_from_dict",
    "CoordinatewiseLSTM", "data", "GroupedLSTMConfig", "imitating", "ImitationState",
    "init_lstm_state", "init_meta_params", "init_unroll", "jitted_loss_curves", "learned_rule",
    "learned_step", "LearnedRuleState", "list_pretrained", "load_meta_params", "load_pretrained",
    "log_sign", "loss_curves", "LSTMConfig", "meta_train", "MetaTrainConfig", "MetaTrainResult",
    "preprocess", "problems", "sample_tasks", "save_meta_params", "tune_baselines",
    "tune_learning_rate", "unroll", "UnrollState",
]
