"""Workspace code of the keras/histology template.

Keras fixes its backend when it is first imported, so the backend is chosen here, before
``src.taskrunner`` imports keras: ``KERAS_BACKEND`` (torch, jax or tensorflow) when set,
otherwise the first installed of tensorflow, torch and jax.
"""

from fedrun.runners.keras import select_backend

select_backend()
