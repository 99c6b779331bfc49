"""Workspace code of the keras/jax/mnist template.

Keras fixes its backend when it is first imported, so the backend is chosen here, before
``src.taskrunner`` imports keras: JAX, unless ``KERAS_BACKEND`` names another one (torch or
tensorflow), which then wins with a warning.
"""

from fedrun.runners.keras import select_backend

select_backend("jax")
