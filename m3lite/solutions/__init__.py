"""Reference solutions of the notebooks' exercises, kept apart so learners don't see them by default.

Teachers: `from m3lite.solutions import nb01` and pass e.g. `nb01.online_softmax` to its checker.
"""
