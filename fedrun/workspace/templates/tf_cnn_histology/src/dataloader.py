"""Colorectal histology tiles (Kather et al. 2016), read from their class folders."""

from __future__ import annotations

from fedrun.data.histology import HistologyInMemory


class TensorFlowHistologyInMemory(HistologyInMemory):
    """The collaborator's tiles: 150x150 RGB floats in [0, 1], labels 0..7 (class folders).

    OpenFL's tf_cnn_histology read the same tiles through TensorFlow Datasets
    (``colorectal_histology``); this loader reads the archive's image folders directly, so it
    needs no TensorFlow. Settings and data paths as in ``fedrun.data.histology``.
    """
