"""Training loops: the hand-written GradientTape loop and the Keras fit() path."""
