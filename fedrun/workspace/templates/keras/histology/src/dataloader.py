"""Colorectal histology tiles (Kather et al. 2016), read from their class folders."""

from __future__ import annotations

from fedrun.data.histology import HistologyInMemory


class KerasHistologyInMemory(HistologyInMemory):
    """The collaborator's tiles: 150x150 RGB floats in [0, 1], labels 0..7 (class folders).

    Settings (plan ``data_loader.settings``): ``batch_size``, ``collaborator_count``,
    ``data_dir`` (where the data set is or goes), ``image_size`` (tiles are resized when it is
    not 150), ``train_fraction`` (0.8), ``download`` (true: fetch the archive from Zenodo and
    check its SHA-384 when the data set is missing), ``max_train_samples`` /
    ``max_valid_samples``. The data path in ``plan/data.yaml`` is a shard number or a folder of
    class folders; see ``fedrun.data.histology``.
    """
