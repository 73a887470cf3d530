"""Optimizers and learning-rate schedules shared by both loops (schedules.py), and
discriminative learning rates inside the optimizer (optimizers.py)."""
