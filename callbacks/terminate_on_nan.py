"""`TerminateOnNaN`: stop training when the batch loss is NaN or infinite."""
from __future__ import annotations

import numpy as np

from tapefit.callbacks.base import Callback


class TerminateOnNaN(Callback):
    """Sets `model.stop_training` (or raises, with `raise_error=True`) on a NaN/inf loss.

    Like Keras, it checks `logs["loss"]` after every training batch (through the
    `on_batch_end` alias).
    """

    def __init__(self, raise_error: bool = False):
        super().__init__()
        self.raise_error = raise_error

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and (np.isnan(loss) or np.isinf(loss)):
            if self.raise_error:
                raise RuntimeError(
                    f"NaN or Inf loss encountered at batch {batch}. "
                    f"Loss value: {loss}. Terminating training immediately.")
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True
