"""Hand-written hooks with Keras callback names and semantics (no keras.callbacks here)."""
from callbacks.backup_and_restore import BackupAndRestore
from callbacks.base import Callback, CallbackList
from callbacks.csv_logger import CSVLogger
from callbacks.early_stopping import EarlyStopping
from callbacks.lambda_callback import LambdaCallback
from callbacks.learning_rate import LearningRateScheduler, ReduceLROnPlateau
from callbacks.model_checkpoint import ModelCheckpoint
from callbacks.progbar_logger import ProgbarLogger
from callbacks.remote_monitor import RemoteMonitor
from callbacks.tensorboard import TensorBoard
from callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "BackupAndRestore",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LambdaCallback",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgbarLogger",
    "ReduceLROnPlateau",
    "RemoteMonitor",
    "TensorBoard",
    "TerminateOnNaN",
]
