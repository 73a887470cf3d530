"""Hand-written hooks with Keras callback names and semantics (no keras.callbacks here)."""
from callbacks.base import Callback, CallbackList

__all__ = ["Callback", "CallbackList"]
