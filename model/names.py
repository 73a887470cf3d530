"""The names `build_model` gives the classifier and the layers it adds around the
backbone (augmentation, preprocessing, head): what tells the backbone's own layers
apart (`model/freeze.py`). Imports nothing, so build.py, freeze.py and augment.py
share it without importing each other."""
MODEL_PREFIX = "tapefit_"  # The model's name: MODEL_PREFIX + the backbone's name.
AUGMENT_PREFIX = "augment_"  # In-model augmentation layers (model/augment.py).
PREPROCESS = "preprocess"  # Our BackbonePreprocess layer (model/build.py).
AVG_POOL = "avg_pool"
HEAD_DROPOUT = "head_dropout"
LOGITS = "logits"
HEAD_LAYERS = (AVG_POOL, HEAD_DROPOUT, LOGITS)
