"""The hook protocol: Keras' `Callback` method names, hand-written.

A hook attaches with `set_model(model)`, receives `set_params(params)` (the same
keys fit() passes: `epochs`, `steps`, `verbose`), is driven by the loop through
Keras' method names, stops training by setting `model.stop_training = True`, and
changes the learning rate through `model.optimizer.learning_rate`. The same
scenario can therefore drive one of our hooks and its Keras namesake.

`CallbackList` dispatches like `keras.callbacks.CallbackList`: the logs of every
event are converted once with `pythonify_logs` (sorted keys, nested dicts
flattened, tensors and numpy scalars turned into Python floats) and that one dict
is handed to every hook in order, so a hook that adds a key (e.g.
`logs["learning_rate"]`) is seen by the hooks after it.
"""
from __future__ import annotations

import keras


def pythonify_logs(logs):
    """Keras' `pythonify_logs`: sorted, flattened, values as floats if possible."""
    logs = logs or {}
    result = {}
    for key, value in sorted(logs.items()):
        if isinstance(value, dict):
            result.update(pythonify_logs(value))
        else:
            try:
                if keras.ops.is_tensor(value):
                    value = keras.ops.convert_to_numpy(value)
                value = float(value)
            except Exception:  # Kept as is, like Keras (strings, arrays).
                pass
            result[key] = value
    return result


class Callback:
    """Base class of all hooks; every method is a no-op.

    As in Keras, `on_train_batch_begin/end` call the legacy aliases
    `on_batch_begin/end`, so hooks (and `LambdaCallback`) may override either.
    """

    def __init__(self):
        self.params = {}
        self._model = None

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self._model = model

    @property
    def model(self):
        return self._model

    # Epoch / train.
    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        """Legacy alias of `on_train_batch_begin`."""

    def on_batch_end(self, batch, logs=None):
        """Legacy alias of `on_train_batch_end`."""

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    # Evaluation (validation inside training, and `evaluate`).
    def on_test_begin(self, logs=None):
        pass

    def on_test_end(self, logs=None):
        pass

    def on_test_batch_begin(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass

    # Prediction.
    def on_predict_begin(self, logs=None):
        pass

    def on_predict_end(self, logs=None):
        pass

    def on_predict_batch_begin(self, batch, logs=None):
        pass

    def on_predict_batch_end(self, batch, logs=None):
        pass


# Events without an index; Keras passes their logs positionally.
_BEGIN_END_EVENTS = (
        "on_train_begin", "on_train_end", "on_test_begin", "on_test_end",
        "on_predict_begin", "on_predict_end",
)
# Epoch events: index and logs positionally, as Keras does.
_EPOCH_EVENTS = ("on_epoch_begin", "on_epoch_end")
# Batch events: Keras passes `logs=` as a keyword.
_BATCH_EVENTS = (
        "on_batch_begin", "on_batch_end", "on_train_batch_begin", "on_train_batch_end",
        "on_test_batch_begin", "on_test_batch_end", "on_predict_batch_begin",
        "on_predict_batch_end",
)
_EVENTS = _BEGIN_END_EVENTS + _EPOCH_EVENTS + _BATCH_EVENTS


class CallbackList(Callback):
    """Dispatches every event to its hooks, in order (like `keras.callbacks.CallbackList`)."""

    def __init__(self, callbacks=(), model=None, **params):
        super().__init__()
        self.callbacks = list(callbacks or ())
        if model is not None:
            self.set_model(model)
        if params:
            self.set_params(params)

    def append(self, callback):
        self.callbacks.append(callback)
        if self._model is not None:
            callback.set_model(self._model)
        if self.params:
            callback.set_params(self.params)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)


def _make_dispatcher(event):
    if event in _BATCH_EVENTS:
        def dispatch(self, batch, logs=None):
            logs = pythonify_logs(logs)
            for callback in self.callbacks:
                getattr(callback, event)(batch, logs=logs)
    elif event in _EPOCH_EVENTS:
        def dispatch(self, epoch, logs=None):
            logs = pythonify_logs(logs)
            for callback in self.callbacks:
                getattr(callback, event)(epoch, logs)
    else:
        def dispatch(self, logs=None):
            logs = pythonify_logs(logs)
            for callback in self.callbacks:
                getattr(callback, event)(logs)
    dispatch.__name__ = event
    dispatch.__doc__ = f"Calls `{event}` on every hook, in order."
    return dispatch


for _event in _EVENTS:
    setattr(CallbackList, _event, _make_dispatcher(_event))
