"""tapefit: fine-tune a pretrained CNN in two phases with a hand-written `tf.GradientTape`
loop that matches Keras' `fit()` bit for bit, and compare training runs honestly.

From the command line: `tapefit train`, `tapefit predict`, `tapefit compare`, `tapefit
sweep` (or `python train.py ...` in a checkout installed with `pip install -e .`).

From Python (docs/python.md)::

    import tapefit
    flags = dict(workdir="runs/pets", data_dir="photos", backbone="mobilenet", alpha=0.25)
    head = tapefit.head(**flags)          # tapefit train --phase=head ...
    tapefit.finetune(**flags)             # tapefit train --phase=finetune ...
    print(tapefit.evaluate(**flags).metrics)

`import tapefit` loads no TensorFlow: the functions below import it when called.
"""
__version__ = "0.1.0"

# Name -> module holding it (loaded on first use, PEP 562).
_API = {
    **{name: "tapefit.api" for name in ("config", "run", "head", "finetune", "evaluate",
                                        "lr_find", "classify", "load_model", "study",
                                        "Result", "Study")},
    "Config": "tapefit.flags.config",
    "TapefitError": "tapefit.flags.errors", "ConfigError": "tapefit.flags.errors",
    "DataError": "tapefit.flags.errors", "RunError": "tapefit.flags.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tapefit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
