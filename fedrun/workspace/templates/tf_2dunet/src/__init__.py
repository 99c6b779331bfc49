"""Workspace code of the tf_2dunet template.

Keras fixes its backend when it is first imported, so the backend is chosen here, before
``src.taskrunner`` imports keras: TensorFlow, unless ``KERAS_BACKEND`` names another one
(torch or jax), which then wins with a warning.
"""

from fedrun.runners.keras import select_backend

select_backend("tensorflow")
