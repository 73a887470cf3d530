"""The optimizer factory (`make_optimizer`, shared by both loops) and discriminative
learning rates (`--layer_lr_decay`) inside the optimizer.

The head trains at the learning rate, the last backbone block at LR·D, the one
before at LR·D², and so on (blocks as the backbone names them,
`model.backbones.Blocks`). The multiplier scales the *update* of each variable —
the learning rate its `update_step` receives — not its gradient: Adam and RMSprop
divide the gradient by its own running magnitude, which would cancel a gradient
scale. Because it lives in the optimizer, the custom loop and `fit()` share it.
"""
from __future__ import annotations

import keras

from tapefit.loops.optim.schedules import learning_rate

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
# Variables that get no weight decay (fastai's bn_wd=False, and biases).
NO_WEIGHT_DECAY = ("bias", "gamma", "beta")
_CLASSES: dict = {}  # Keras optimizer class -> its subclass with per-layer rates.


def make_optimizer(cfg, steps_per_epoch: int | None = None, model=None, *,
                   base_rate: float | None = None) -> keras.optimizers.Optimizer:
    """A fresh optimizer for one phase (never carried across phases).

    `base_rate`: the phase's initial rate as its plan resolved it (`Plan.learning_rate`);
    None where no plan is (evaluate, benchmarks): the configuration's own.

    `steps_per_epoch`: what a per-step schedule needs to know the length of the
    phase (without it, e.g. at `--phase=evaluate` where nothing trains, the
    optimizer gets the plain rate). `model`: needed for `--layer_lr_decay` (the
    multiplier of each variable comes from the backbone block it is in; without it,
    again where nothing trains, every variable gets the plain rate).

    `--weight_decay` makes Adam an AdamW (decoupled decay; SGD and RMSprop get
    Keras' decoupled `weight_decay` too), biases and batch-norm parameters
    excluded. `--clipnorm` clips each variable's gradient; `--ema` keeps an
    exponential moving average of the weights (Keras' `use_ema`), swapped in at
    the end of the phase by both loops. Under mixed_float16 the optimizer scales
    the loss dynamically, as `compile()` would wrap it, so that both loops step
    the same way.
    """
    rate = learning_rate(cfg, steps_per_epoch, base_rate)
    kwargs = {}
    cls = OPTIMIZERS[cfg.optimizer]
    if cfg.weight_decay:
        kwargs["weight_decay"] = cfg.weight_decay
        if cfg.optimizer == "adam":
            cls = keras.optimizers.AdamW
    if cfg.clipnorm:
        kwargs["clipnorm"] = cfg.clipnorm
    if cfg.ema:
        kwargs.update(use_ema=True, ema_momentum=cfg.ema)
    multipliers = None
    if cfg.layer_lr_decay != 1.0 and model is not None:
        multipliers = layer_lr_multipliers(model, cfg.layer_lr_decay)
        cls = with_lr_multipliers(cls)
        kwargs["lr_multipliers"] = multipliers
    optimizer = cls(learning_rate=rate, **kwargs)
    if cfg.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    if cfg.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer




def with_lr_multipliers(cls):
    """A subclass of the Keras optimizer `cls` taking `lr_multipliers`: a mapping from
    a variable's layer name (the first component of `variable.path`) to the factor
    its learning rate is multiplied by; unnamed layers use 1.

    Only the rate of `update_step` is scaled: Keras' decoupled weight decay
    (`--weight_decay`) keeps using the base rate for every variable.
    """
    if cls not in _CLASSES:
        class LayerRates(cls):
            def __init__(self, *args, lr_multipliers=None, **kwargs):
                super().__init__(*args, **kwargs)
                self.lr_multipliers = dict(lr_multipliers or {})
                self._variable_multipliers = []

            def build(self, variables):
                if self.built:  # Keras' optimizers build once; later calls change nothing.
                    return
                super().build(variables)
                self._variable_multipliers = [
                    float(self.lr_multipliers.get(layer_of(v), 1.0)) for v in variables]

            def variable_multiplier(self, variable) -> float:
                return self._variable_multipliers[self._get_variable_index(variable)]

            def update_step(self, gradient, variable, learning_rate):
                factor = self.variable_multiplier(variable)
                if factor != 1.0:  # A Python constant: traced into the step once.
                    learning_rate = learning_rate * keras.ops.cast(factor,
                                                                   learning_rate.dtype)
                return super().update_step(gradient, variable, learning_rate)

            def get_config(self):
                return {**super().get_config(), "lr_multipliers": self.lr_multipliers}

        LayerRates.__name__ = LayerRates.__qualname__ = f"LayerRates{cls.__name__}"
        _CLASSES[cls] = LayerRates
    return _CLASSES[cls]


def layer_of(variable) -> str:
    return variable.path.split("/")[0]


def backbone_blocks(model) -> list[tuple[str, list[str]]]:
    """(block name, its layer names) for the backbone of a `model.build_model` model,
    in order. A layer without a block name (a stem before the first block, a final
    batch-norm after the last) joins the block next to it. Blocks are the coarsest
    names the backbone gives (stages where it has them: `conv5`, `block7`)."""
    from tapefit.model.freeze import backbone_layer_names, backbone_of
    blocks = backbone_of(model).blocks
    groups: list[tuple[str, list[str]]] = []
    pending: list[str] = []  # Layers before the first named block.
    for name in backbone_layer_names(model):
        names = blocks.names(name)
        if names and (not groups or groups[-1][0] != names[0]):
            groups.append((names[0], pending))
            pending = []
        if groups:
            groups[-1][1].append(name)
        else:
            pending.append(name)
    if pending:
        groups.append(("stem", pending))
    return groups


def layer_lr_multipliers(model, decay: float) -> dict[str, float]:
    """{layer name: multiplier}: 1 for the head, decay**k for the backbone block k-th
    from the end (k = 1 for the last block). Frozen blocks get factors too; they
    have no trainable variables, so only the unfrozen ones, counted from the last,
    matter."""
    multipliers = {}
    groups = backbone_blocks(model)
    for depth, (_, names) in enumerate(reversed(groups), start=1):
        for name in names:
            multipliers[name] = decay ** depth
    return multipliers
