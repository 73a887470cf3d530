"""The Experts-style loop: tf.function + tf.GradientTape, driven like Keras fit().

`CustomLoop.fit` follows `keras/src/backend/tensorflow/trainer.py` step by step
(same hook calls in the same order, same loss scaling, same batch-size-weighted
running-mean metrics), so with the same data order and seeds it produces the
same weights and logs as `model.compile(...); model.fit(...)`. Exact resume is the
loop's own: `fit(..., checkpointer=)` takes a `loops.training.checkpointer.Checkpointer`
(as Orbit's Controller owns its CheckpointManager), not a hook.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from tapefit.callbacks import CallbackList
from tapefit.loops.training.checkpointer import Position


def make_loss(cfg=None):
    """The loss of both loops (compile() gets the same factory's object).

    Without `cfg` (or with `--label_smoothing=0`): sparse cross-entropy on logits.
    With label smoothing: `SmoothedCrossentropy` (issue 13).
    """
    smoothing = getattr(cfg, "label_smoothing", 0.0) if cfg is not None else 0.0
    if smoothing or _mixes(cfg):  # Mixed batches (--augment=mixup,cutmix): soft labels.
        return SmoothedCrossentropy(label_smoothing=smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mixes(cfg) -> bool:
    from tapefit.model.augment import mixes
    return cfg is not None and bool(mixes(getattr(cfg, "augment", "")))


class SoftLabelAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Accuracy for integer labels, or for soft labels (mixed batches: the class
    with the largest weight counts as the label)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        if len(y_true.shape) == len(y_pred.shape):
            y_true = keras.ops.argmax(y_true, axis=-1)
        return super().update_state(y_true, y_pred, sample_weight)


class SmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on logits with label smoothing, for integer labels (one-hot
    encoded here; Keras' sparse loss has no smoothing) or soft labels (one row of
    class probabilities per example). Reduction as Keras' losses: sum over batch size."""

    def __init__(self, label_smoothing=0.0, name="smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        if len(y_true.shape) < len(y_pred.shape):  # Integer labels.
            y_true = keras.ops.one_hot(keras.ops.cast(y_true, "int32"), y_pred.shape[-1],
                                       dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            y_true, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def make_metrics(cfg=None):
    """The compiled metrics of both loops, by the names fit() logs them under
    (`cfg` with --augment=mixup or cutmix: an accuracy that takes soft labels)."""
    if _mixes(cfg):
        return [SoftLabelAccuracy(name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def unscale_loss_for_distribution(loss):
    """Undoes the 1/num_replicas scaling Keras losses apply under tf.distribute."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * tf.cast(replicas, loss.dtype) if replicas > 1 else loss


class CustomLoop:
    """Trains and evaluates `model` with hand-written steps.

    Args:
      model: a built Keras model (created under `strategy.scope()`).
      optimizer: a fresh Keras optimizer; attached as `model.optimizer` so hooks
        change the learning rate the way Keras callbacks do.
      strategy: a `tf.distribute.Strategy` (default: the current one).
      jit_compile: compile the per-replica step with XLA (fit's `jit_compile`).
      steps_per_execution: train steps per tf.function call (fit's argument).
      train_model: what the steps run, when not `model` itself: the trainable
        suffix of `model` fed with cached features (loops/caches/feature_cache.py).
        It shares its layers with `model`, which hooks keep seeing.
      loss_fn: the loss (default `make_loss()`; runners pass `make_loss(cfg)`).
      metrics: the compiled metrics (default `make_metrics()`; runners pass
        `make_metrics(cfg)`).
    """

    def __init__(self, model, optimizer, strategy=None, jit_compile=False,
                 steps_per_execution=1, train_model=None, loss_fn=None, metrics=None):
        self.model = model
        self.train_model = train_model or model
        self.optimizer = optimizer
        self.strategy = strategy or tf.distribute.get_strategy()
        self.steps_per_execution = steps_per_execution
        with self.strategy.scope():
            self.loss_fn = loss_fn if loss_fn is not None else make_loss()
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.compiled_metrics = metrics if metrics is not None else make_metrics()
            optimizer.build(self.train_model.trainable_variables)
        model.optimizer = optimizer
        self._jit_compile = jit_compile
        self.retrace()

    def retrace(self):
        """Wraps the steps in new tf.functions, traced at their next call: at the start,
        and after the trainable layers changed (gradual unfreezing), when the train step
        must differentiate the new set of weights."""
        train_step, test_step = self.train_step, self.test_step
        if self._jit_compile:
            train_step = tf.function(train_step, jit_compile=True, reduce_retracing=True)
            test_step = tf.function(test_step, jit_compile=True, reduce_retracing=True)
        self._train_step, self._test_step = train_step, test_step
        self._train_function = tf.function(self._train_steps)
        self._test_function = tf.function(self._test_batch)

    def switch_data(self, train_data, validation_data=None, train_model=None):
        """From the next step of `fit` on: batches from `train_data` (positioned at
        that step), validation on `validation_data`, steps running `train_model`
        (default: the model). Gradual unfreezing calls it at an epoch start when it
        re-cuts the feature cache (new features, a new suffix of the same model)."""
        self.train_model = train_model or self.model
        self._train_iterator = iter(self.strategy.experimental_distribute_dataset(train_data))
        self._validation_data = validation_data
        self.retrace()

    @property
    def metrics(self):
        return [self.loss_tracker, *self.compiled_metrics]

    # ---- one step, as in keras Model.train_step / test_step -------------------
    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self.train_model(x, training=True)
            loss = self.loss_fn(y, y_pred)  # Mean over the replica's batch / replicas.
            self.loss_tracker.update_state(
                unscale_loss_for_distribution(loss), sample_weight=tf.shape(x)[0])
            loss = self.optimizer.scale_loss(loss)  # Loss scaling for float16.
        weights = self.train_model.trainable_weights
        gradients = tape.gradient(loss, weights)
        self.optimizer.apply_gradients(zip(gradients, weights))
        for metric in self.compiled_metrics:
            metric.update_state(y, y_pred)

    def test_step(self, data):
        x, y = data
        y_pred = self.train_model(x, training=False)
        loss = self.loss_fn(y, y_pred)
        self.loss_tracker.update_state(
            unscale_loss_for_distribution(loss), sample_weight=tf.shape(x)[0])
        for metric in self.compiled_metrics:
            metric.update_state(y, y_pred)

    # ---- compiled drivers --------------------------------------------------------
    def _results(self):
        return {m.name: m.result() for m in self.metrics}

    def _train_steps(self, iterator, num_steps):
        for _ in tf.range(num_steps):
            self.strategy.run(self._train_step, args=(next(iterator),))
        return self._results()

    def _test_batch(self, iterator):
        self.strategy.run(self._test_step, args=(next(iterator),))
        return self._results()

    def reset_metrics(self):
        for metric in self.metrics:
            metric.reset_state()

    @staticmethod
    def _to_python(logs):
        return {name: float(value) for name, value in logs.items()}

    # ---- fit / evaluate ----------------------------------------------------------
    def fit(self, train_data, *, epochs, steps_per_epoch, validation_data=None,
            callbacks=(), initial_epoch=0, verbose=0, checkpointer=None):
        """Runs epochs [initial_epoch, epochs) over one iterator of `train_data`.

        `train_data` yields batches forever; each epoch takes `steps_per_epoch`
        of them (the data pipeline fixes the order of every epoch). A `checkpointer`
        (`loops.training.checkpointer.Checkpointer`, attached here to this loop and the hooks)
        makes the run resumable exactly: training continues where its backup was
        saved, and `train_data` must then start at the backup's `position`.
        Returns the last epoch's logs (None if no epoch ran).
        """
        model = self.model
        if checkpointer is not None:
            checkpointer.attach(self, list(callbacks))
        if not isinstance(callbacks, CallbackList):
            callbacks = CallbackList(callbacks, model=model, verbose=verbose,
                                     epochs=epochs, steps=steps_per_epoch)
        # Attributes, not locals: a hook may switch them at an epoch start (switch_data).
        self._train_iterator = iter(self.strategy.experimental_distribute_dataset(train_data))
        self._validation_data = validation_data
        model.stop_training = False
        callbacks.on_train_begin()
        training_logs, first_step = None, 0
        position = checkpointer.restore() if checkpointer is not None else None
        if position is not None:
            initial_epoch, first_step = position.epoch, position.step
            training_logs = checkpointer.last_logs
            if position.stopped:
                initial_epoch = epochs
        global_step = initial_epoch * steps_per_epoch + first_step
        for epoch in range(initial_epoch, epochs):
            if not first_step:  # Mid-epoch resume: the restored running means go on.
                self.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            logs = {}
            for begin in range(first_step, steps_per_epoch, self.steps_per_execution):
                end = min(begin + self.steps_per_execution, steps_per_epoch) - 1
                callbacks.on_train_batch_begin(begin)
                logs = self._to_python(
                    self._train_function(self._train_iterator, tf.constant(end - begin + 1)))
                callbacks.on_train_batch_end(end, logs)
                global_step += end - begin + 1
                if model.stop_training:
                    break
                if (checkpointer is not None and checkpointer.due(global_step)
                        and end + 1 < steps_per_epoch):
                    checkpointer.save(Position(epoch, end + 1), training_logs)
            first_step = 0
            epoch_logs = dict(logs)
            if self._validation_data is not None:
                val_logs = self.evaluate(self._validation_data, callbacks=callbacks)
                epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
            callbacks.on_epoch_end(epoch, epoch_logs)
            training_logs = epoch_logs
            if checkpointer is not None:
                checkpointer.save(Position(epoch + 1, 0, bool(model.stop_training)),
                                  training_logs)
            if model.stop_training:
                break
        if epochs > 0:  # As fit(): e.g. swaps in EMA weights when the optimizer uses them.
            self.optimizer.finalize_variable_values(model.trainable_weights)
        callbacks.on_train_end(logs=training_logs)
        self._train_iterator = self._validation_data = None
        return training_logs

    def evaluate(self, data, callbacks=()):
        """Evaluates on a finite batched dataset; returns {"loss", "accuracy"}."""
        if not isinstance(callbacks, CallbackList):
            callbacks = CallbackList(callbacks, model=self.model)
        steps = int(data.cardinality())  # Unknown (< 0): until the data runs out.
        iterator = iter(self.strategy.experimental_distribute_dataset(data))
        self.reset_metrics()
        callbacks.on_test_begin()
        logs, step = {}, 0
        while step != steps:
            callbacks.on_test_batch_begin(step)
            try:
                logs = self._to_python(self._test_function(iterator))
            except tf.errors.OutOfRangeError:
                break
            callbacks.on_test_batch_end(step, logs)
            step += 1
        callbacks.on_test_end(logs)
        return logs
