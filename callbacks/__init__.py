"""Hand-written hooks with Keras callback names and semantics (no keras.callbacks here)."""
from tapefit.callbacks.backup_and_restore import BackupAndRestore
from tapefit.callbacks.base import Callback, CallbackList
from tapefit.callbacks.csv_logger import CSVLogger
from tapefit.callbacks.early_stopping import EarlyStopping
from tapefit.callbacks.lambda_callback import LambdaCallback
from tapefit.callbacks.learning_rate import LearningRateScheduler, ReduceLROnPlateau
from tapefit.callbacks.model_checkpoint import ModelCheckpoint
from tapefit.callbacks.progbar_logger import ProgbarLogger
from tapefit.callbacks.remote_monitor import RemoteMonitor
from tapefit.callbacks.tensorboard import TensorBoard
from tapefit.callbacks.terminate_on_nan import TerminateOnNaN

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
