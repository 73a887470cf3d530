"""The hook protocol: Keras' `Callback` method names, hand-written.

A hook attaches with `set_model(model)`, receives `set_params(params)` (the same
keys fit() passes: `epochs`, `steps`, `verbose`), is driven by the loop through
Keras' method names, stops training by setting `model.stop_training = True`, and
changes the learning rate through `model.optimizer.learning_rate`. The same
scenario can therefore drive one of our hooks and its Keras namesake.
"""
from __future__ import annotations


class Callback:
    """Base class of all hooks; every method is a no-op."""

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

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

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


_EVENTS = (
        "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
        "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end",
        "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
        "on_predict_batch_begin", "on_predict_batch_end",
)


class CallbackList(Callback):
    """Dispatches every event to its hooks, in order (like `keras.callbacks.CallbackList`)."""

    def __init__(self, callbacks=(), model=None, **params):
        super().__init__()
        self.callbacks = list(callbacks)
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
    def dispatch(self, *args, **kwargs):
        for callback in self.callbacks:
            getattr(callback, event)(*args, **kwargs)
    dispatch.__name__ = event
    dispatch.__doc__ = f"Calls `{event}` on every hook, in order."
    return dispatch


for _event in _EVENTS:
    setattr(CallbackList, _event, _make_dispatcher(_event))
