"""`TensorBoard`: the summaries Keras' TensorBoard callback writes, with `tf.summary`.

Writers: `<log_dir>/train` and `<log_dir>/validation`. With the default
`update_freq="epoch"`, every epoch writes `epoch_<key>` scalars at step `epoch`
(0-based): the logs without a `val_` prefix plus `learning_rate` go to train/,
the `val_` keys (prefix stripped) go to validation/; every validation run also
writes `evaluation_<key>_vs_iterations` to validation/ at step
`optimizer.iterations`. An integer `update_freq` (or "batch") adds
`batch_<key>` scalars every N training batches, with Keras' writer contexts.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings

import keras
from keras import ops

from tapefit.callbacks.base import Callback
from tapefit.layout import paths


def keras_model_summary(name, data, step=None):
    """Writes the model's JSON config for TensorBoard's Keras graph view (as Keras)."""
    import tensorflow as tf

    summary_metadata = tf.compat.v1.SummaryMetadata()
    summary_metadata.plugin_data.plugin_name = "graph_keras_model"
    summary_metadata.plugin_data.content = b"1"  # Version 1.
    try:
        json_string = data.to_json()
    except Exception as exc:  # noqa: BLE001 - a summary must not break training.
        warnings.warn(f"Model failed to serialize as JSON. Ignoring... {exc}")  # noqa: B028
        return False
    with tf.summary.experimental.summary_scope(name, "graph_keras_model", [data, step]) as (
            tag, _):
        return tf.summary.write(tag=tag, tensor=json_string, step=step,
                                metadata=summary_metadata)


class TensorBoard(Callback):
    """Logs scalars (and optionally histograms, images, profiles) for TensorBoard.

    Same arguments and summaries as `keras.callbacks.TensorBoard`. With
    `write_graph=True` the Keras model summary (the "conceptual graph") is
    written, and the op graph of `model.train_function` when the model has one
    (a compiled model trained by fit); the custom loop's own `tf.function` is not
    known to the model, so its op graph is not written.
    """

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0,
                 embeddings_freq=0, embeddings_metadata=None):
        super().__init__()
        self.log_dir = str(log_dir)
        self.histogram_freq = histogram_freq
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = write_steps_per_second
        self.update_freq = 1 if update_freq == "batch" else update_freq
        self.embeddings_freq = embeddings_freq
        self.embeddings_metadata = embeddings_metadata
        self._init_profile_batch(profile_batch)
        self._global_train_batch = 0
        self._global_test_batch = 0
        self._previous_epoch_iterations = 0
        self._train_accumulated_time = 0
        self._batch_start_time = 0
        self._epoch_start_time = 0
        self._summary_module = None
        self._writers = {}  # Created lazily: no event file unless needed.
        self._prev_summary_state = []  # Writer contexts entered by `_push_writer`.

    def set_model(self, model):
        self._model = model
        self._log_write_dir = self.log_dir
        self._train_dir = os.path.join(self._log_write_dir, paths.TENSORBOARD_TRAIN)
        self._val_dir = os.path.join(self._log_write_dir, paths.TENSORBOARD_VALIDATION)
        self._writers = {}
        self._should_write_train_graph = False
        if self.write_graph:
            self._write_keras_model_summary()
            self._should_write_train_graph = True
        if self.embeddings_freq:
            self._configure_embeddings()

    @property
    def summary(self):
        if self._summary_module is None:
            import tensorflow as tf
            self._summary_module = tf.summary
        return self._summary_module

    @property
    def _train_writer(self):
        if "train" not in self._writers:
            self._writers["train"] = self.summary.create_file_writer(self._train_dir)
        return self._writers["train"]

    @property
    def _val_writer(self):
        if "val" not in self._writers:
            self._writers["val"] = self.summary.create_file_writer(self._val_dir)
        return self._writers["val"]

    # ---- graph, model summary, embeddings -----------------------------------
    def _write_keras_model_train_graph(self):
        with self._train_writer.as_default():
            train_fn = getattr(self.model, "train_function", None)
            if hasattr(train_fn, "function_spec"):
                try:
                    if hasattr(train_fn, "_concrete_stateful_fn"):
                        self.summary.graph(train_fn._concrete_stateful_fn.graph)
                    else:
                        self.summary.graph(train_fn._concrete_variable_creation_fn.graph)
                except AttributeError as e:  # Private TF attributes; never fatal.
                    logging.warning("TensorBoard: could not write the train graph: %s", e)

    def _write_keras_model_summary(self):
        with self._train_writer.as_default():
            if self.model.__class__.__name__ in ("Functional", "Sequential"):
                keras_model_summary("keras", self.model, step=0)

    def _configure_embeddings(self):
        from google.protobuf import text_format
        from tensorboard.plugins import projector

        config = projector.ProjectorConfig()
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.Embedding):
                embedding = config.embeddings.add()
                embedding.tensor_name = (
                    "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE")
                if self.embeddings_metadata is not None:
                    if isinstance(self.embeddings_metadata, str):
                        embedding.metadata_path = self.embeddings_metadata
                    elif layer.name in self.embeddings_metadata.keys():
                        embedding.metadata_path = self.embeddings_metadata.pop(layer.name)
        if self.embeddings_metadata and not isinstance(self.embeddings_metadata, str):
            raise ValueError(
                "Unrecognized `Embedding` layer names passed to `TensorBoard` "
                f"`embeddings_metadata` argument: {self.embeddings_metadata.keys()}")
        os.makedirs(self._log_write_dir, exist_ok=True)
        path = os.path.join(self._log_write_dir, paths.PROJECTOR_CONFIG)
        with open(path, "w") as f:
            f.write(text_format.MessageToString(config))

    # ---- writer contexts (only used with a batch-level update_freq) ---------
    def _push_writer(self, writer, step):
        if self.update_freq == "epoch":
            return

        def should_record():
            return step % self.update_freq == 0

        summary_context = (writer.as_default(step), self.summary.record_if(should_record))
        self._prev_summary_state.append(summary_context)
        summary_context[0].__enter__()
        summary_context[1].__enter__()

    def _pop_writer(self):
        if self.update_freq == "epoch":
            return
        previous_context = self._prev_summary_state.pop()
        previous_context[1].__exit__(*sys.exc_info())
        previous_context[0].__exit__(*sys.exc_info())

    def _close_writers(self):
        for writer in self._writers.values():
            writer.close()

    # ---- profiling ------------------------------------------------------------
    def _init_profile_batch(self, profile_batch):
        message = (
            "profile_batch must be a non-negative integer or 2-tuple of positive "
            "integers. A pair of positive integers signifies a range of batches "
            f"to profile. Found: {profile_batch}")
        if isinstance(profile_batch, str):  # Legacy "start,stop" or "start".
            profile_batch = [int(b) for b in profile_batch.split(",")]
        if isinstance(profile_batch, int):
            self._start_batch = self._stop_batch = profile_batch
        elif isinstance(profile_batch, (tuple, list)) and len(profile_batch) == 2:
            self._start_batch, self._stop_batch = profile_batch
        else:
            raise ValueError(message)
        if self._start_batch < 0 or self._stop_batch < self._start_batch:
            raise ValueError(message)
        self._profiler_started = False
        self._batch_trace_context = None
        if self._start_batch > 0:  # Warm-up, for more accurate profiles.
            self._start_profiler(logdir="")
            self._stop_profiler(save=False)
        self._is_tracing = False
        self._should_trace = not (self._start_batch == 0 and self._stop_batch == 0)

    def _start_trace(self):
        self.summary.trace_on(graph=True, profiler=False)
        self._start_profiler(logdir=self._train_dir)
        self._is_tracing = True

    def _stop_trace(self, batch=None):
        if batch is None:
            batch = self._stop_batch
        with self._train_writer.as_default():
            self.summary.trace_export(name="batch_%d" % batch, step=batch)
        self._stop_profiler()
        self._is_tracing = False

    def _start_profiler(self, logdir):
        if self._profiler_started:
            return
        try:
            import tensorflow as tf
            tf.profiler.experimental.start(logdir=logdir)
            self._profiler_started = True
        except Exception as e:  # noqa: BLE001 - profiler errors are not fatal.
            logging.error("Failed to start profiler: %s", e)

    def _stop_profiler(self, save=True):
        if not self._profiler_started:
            return
        try:
            import tensorflow as tf
            tf.profiler.experimental.stop(save=save)
        except Exception as e:  # noqa: BLE001
            logging.error("Failed to stop profiler: %s", e)
        finally:
            self._profiler_started = False

    # ---- events -----------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._global_train_batch = 0
        self._previous_epoch_iterations = 0
        self._push_writer(self._train_writer, self._global_train_batch)

    def on_train_end(self, logs=None):
        self._pop_writer()
        if self._is_tracing:
            self._stop_trace()
        self._close_writers()

    def on_test_begin(self, logs=None):
        self._push_writer(self._val_writer, self._global_test_batch)

    def on_test_end(self, logs=None):
        optimizer = self.model.optimizer
        if optimizer and hasattr(optimizer, "iterations"):
            with self._val_writer.as_default():
                for name, value in (logs or {}).items():
                    self.summary.scalar(f"evaluation_{name}_vs_iterations", value,
                                        step=optimizer.iterations)
        self._pop_writer()

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1
        if self.update_freq != "epoch":
            self._pop_writer()
            self._push_writer(self._train_writer, self._global_train_batch)
        if self.write_steps_per_second:
            self._batch_start_time = time.time()
        if not self._should_trace:
            return
        if self._global_train_batch == self._start_batch:
            self._start_trace()
        if self._profiler_started:
            import tensorflow as tf
            self._batch_trace_context = tf.profiler.experimental.Trace(
                "Profiled batch", step_num=batch)
            self._batch_trace_context.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self._should_write_train_graph:
            self._write_keras_model_train_graph()
            self._should_write_train_graph = False
        if self.write_steps_per_second:
            batch_run_time = time.time() - self._batch_start_time
            self.summary.scalar("batch_steps_per_second", 1.0 / batch_run_time,
                                step=self._global_train_batch)
        if isinstance(logs, dict):
            for name, value in logs.items():
                self.summary.scalar(f"batch_{name}", value, step=self._global_train_batch)
        if not self._should_trace:
            return
        if self._is_tracing:
            if self._profiler_started and self._batch_trace_context is not None:
                self._batch_trace_context.__exit__(None, None, None)
                self._batch_trace_context = None
            if self._global_train_batch >= self._stop_batch:
                self._stop_trace()

    def on_test_batch_begin(self, batch, logs=None):
        self._global_test_batch += 1
        if self.update_freq != "epoch":
            self._pop_writer()
            self._push_writer(self._val_writer, self._global_test_batch)

    def on_epoch_begin(self, epoch, logs=None):
        if self.write_steps_per_second:
            self._previous_epoch_iterations = ops.convert_to_tensor(
                self.model.optimizer.iterations, "float32")
            self._epoch_start_time = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self._log_epoch_metrics(epoch, logs)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)
        if self.embeddings_freq and epoch % self.embeddings_freq == 0:
            self._log_embeddings(epoch)

    # ---- epoch summaries ----------------------------------------------------
    def _collect_learning_rate(self, logs):
        optimizer = self.model.optimizer
        if hasattr(optimizer, "inner_optimizer"):  # LossScaleOptimizer.
            optimizer = optimizer.inner_optimizer
        if hasattr(optimizer, "optimizers"):
            for opt in optimizer.optimizers:
                logs[f"learning_rate_{opt.name}"] = float(ops.convert_to_numpy(opt.learning_rate))
        elif isinstance(optimizer, keras.optimizers.Optimizer):
            logs["learning_rate"] = float(ops.convert_to_numpy(optimizer.learning_rate))
        return logs

    def _compute_steps_per_second(self):
        current_iteration = ops.convert_to_tensor(self.model.optimizer.iterations, "float32")
        elapsed = ops.convert_to_tensor(time.time() - self._epoch_start_time, "float32")
        return float((current_iteration - self._previous_epoch_iterations) / elapsed)

    def _log_epoch_metrics(self, epoch, logs):
        if not logs:
            return
        train_logs = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val_logs = {k: v for k, v in logs.items() if k.startswith("val_")}
        train_logs = self._collect_learning_rate(train_logs)
        if self.write_steps_per_second:
            train_logs["steps_per_second"] = self._compute_steps_per_second()
        if train_logs:
            with self._train_writer.as_default():
                for name, value in train_logs.items():
                    self.summary.scalar(f"epoch_{name}", value, step=epoch)
        if val_logs:
            with self._val_writer.as_default():
                for name, value in val_logs.items():
                    self.summary.scalar(f"epoch_{name[4:]}", value, step=epoch)

    def _log_weights(self, epoch):
        with self._train_writer.as_default():
            for layer in self.model.layers:
                for weight in layer.weights:
                    weight_name = weight.path.replace(":", "_")
                    self.summary.histogram(f"{weight_name}/histogram", weight, step=epoch)
                    if self.write_images:
                        self._log_weight_as_image(weight, f"{weight_name}/image", epoch)
            self._train_writer.flush()

    def _log_weight_as_image(self, weight, weight_name, epoch):
        w_img = ops.squeeze(weight)
        shape = w_img.shape
        if len(shape) == 1:  # Bias.
            w_img = ops.reshape(w_img, [1, shape[0], 1, 1])
        elif len(shape) == 2:  # Dense kernel.
            if shape[0] > shape[1]:
                w_img = ops.transpose(w_img)
                shape = w_img.shape
            w_img = ops.reshape(w_img, [1, shape[0], shape[1], 1])
        elif len(shape) == 3:  # Conv kernel: one image per output channel.
            if keras.backend.image_data_format() == "channels_last":
                w_img = ops.transpose(w_img, [2, 0, 1])
                shape = w_img.shape
            w_img = ops.reshape(w_img, [shape[0], shape[1], shape[2], 1])
        w_img = ops.convert_to_numpy(w_img)
        shape = w_img.shape
        if len(shape) == 4 and shape[-1] in [1, 3, 4]:
            self.summary.image(weight_name, w_img, step=epoch)

    def _log_embeddings(self, epoch):
        path = os.path.join(self._log_write_dir, paths.TENSORBOARD_TRAIN,
                            paths.EMBEDDING_WEIGHTS.format(epoch=epoch))
        self.model.save_weights(path)

    # ---- resumable state ----------------------------------------------------
    def get_state(self):
        return {"global_train_batch": self._global_train_batch,
                "global_test_batch": self._global_test_batch}

    def set_state(self, state):
        """Restores the batch counters; call after `on_train_begin` (which resets one)."""
        self._global_train_batch = state["global_train_batch"]
        self._global_test_batch = state["global_test_batch"]
        if self.update_freq != "epoch" and self._prev_summary_state:
            # The writer context on_train_begin entered records by step 0; an
            # uninterrupted run would be at the restored step.
            self._pop_writer()
            self._push_writer(self._train_writer, self._global_train_batch)
