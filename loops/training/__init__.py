"""The loop and its runners: the hand-written GradientTape loop (custom.py) and
its exact-resume checkpointer (checkpointer.py), one runner per loop
(runners.py), the one hook-spec list (hooks.py), Keras' weight saving without
its set-up cost (keras_saving.py), tf.distribute (strategy.py)."""
