"""Recipes and per-phase defaults: the learning rate each phase starts from, the block
each backbone's fine-tuning unfreezes from, and `--recipe`'s named settings of the
fine-tuning flags (`apply_recipe`, which `flags.config.resolve` calls: the one place a
recipe is applied).
"""
from __future__ import annotations

from tapefit.flags.fields import check_choice

# Learning-rate defaults per phase: fine-tuning uses a tenth of the head default, a
# constant (not a tenth of whatever rate the head ran with, e.g. after --learning_rate=auto;
# README "Learning-rate finder" says why).
HEAD_LEARNING_RATE = 1e-3
FINETUNE_LEARNING_RATE = HEAD_LEARNING_RATE / 10

# Default first trainable block in the finetune phase, per backbone: its last block
# or stage (model/backbones.py's `Backbone.default_unfreeze` reads it from here; the
# blocks exist in each model: tests/test_backbones.py).
DEFAULT_UNFREEZE_FROM = {
    "vgg16": "block5", "vgg19": "block5", "resnet50": "conv5", "resnet50v2": "conv5",
    "mobilenet": "block_12", "mobilenet_v2": "block_16",
    "mobilenet_v3_small": "expanded_conv_10", "mobilenet_v3_large": "expanded_conv_14",
    "efficientnet_b0": "block7", "efficientnet_b1": "block7", "efficientnet_b2": "block7",
    "efficientnet_b3": "block7", "efficientnetv2_b0": "block6h", "convnext_tiny": "stage_3",
    "densenet121": "conv5", "inception_v3": "mixed9", "xception": "block14"}


# --recipe: named settings of the fine-tuning flags, per phase (`apply_recipe`). A flag
# given explicitly overrides its recipe value; config.json records the resolved values.
# `classic` is the behaviour before recipes (every flag at its default). `tuned` was
# chosen with bench/recipes.py on the train/validation photos (bench/README.md:
# candidate `tuned_hot_head`).
RECIPES = {
    "classic": {},
    "tuned": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 1e-2, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
}

# The flags a --recipe sets: a flag given explicitly wins over its recipe value.
RECIPE_FIELDS = tuple(sorted({k for recipe in RECIPES.values() for phase in recipe.values()
                              for k in phase}))


def recipe_values(recipe: str, phase: str) -> dict:
    """The flag values `--recipe` sets for `phase` (lr_find: those of its --for_phase
    but the rate and schedule, which the finder sets itself)."""
    if recipe not in RECIPES:
        check_choice("recipe", recipe, tuple(RECIPES))
    return dict(RECIPES[recipe].get(phase, {}))


def apply_recipe(values: dict, explicit=()) -> dict:
    """`values` (Config field values) with the recipe's settings for their phase,
    except the fields in `explicit` (flags given on the command line)."""
    phase = values.get("phase", "head")
    settings = recipe_values(values.get("recipe", "classic"),
                             values.get("for_phase", "head") if phase == "lr_find" else phase)
    if phase == "lr_find":
        settings = {k: v for k, v in settings.items()
                    if k not in ("learning_rate", "lr_schedule")}
    return {**values, **{k: v for k, v in settings.items() if k not in set(explicit)}}
