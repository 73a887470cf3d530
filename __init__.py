"""tapefit: fine-tune a pretrained CNN in two phases with a hand-written `tf.GradientTape`
loop that matches Keras' `fit()` bit for bit, and compare training runs honestly.

Importing `tapefit` loads no TensorFlow: the command-line entry points are `tapefit train`,
`tapefit predict`, `tapefit compare` and `tapefit sweep` (or `python train.py ...` in a
checkout installed with `pip install -e .`).
"""
__version__ = "0.1.0"
