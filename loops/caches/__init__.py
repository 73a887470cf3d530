"""The frozen-prefix feature cache of the custom loop (feature_cache.py), under
flips (flip_features.py), its bfloat16 pass (feature_precision.py)."""
