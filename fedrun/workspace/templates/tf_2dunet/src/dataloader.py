"""BraTS MRI slices for whole-tumour segmentation, read from the subjects' NIfTI volumes."""

from __future__ import annotations

from fedrun.data.brats import BratsSlicesInMemory


class TensorFlowBratsInMemory(BratsSlicesInMemory):
    """Axial slices of the collaborator's BraTS subjects and their whole-tumour masks.

    Settings (plan ``data_loader.settings``): ``batch_size``, ``collaborator_count``,
    ``data_dir`` (the folder holding the subject folders), ``modalities`` (default
    ``[flair]``; any of t1, t1ce, t2, flair, stacked as channels), ``crop_size`` (centre crop,
    192) and ``image_size`` (128), ``slices`` (brain, tumor or all), ``labels`` (label values
    that count as tumour; default all), ``train_fraction`` (0.8 of the subjects),
    ``max_subjects``. The data path in ``plan/data.yaml`` is a shard number or a folder of
    subjects; see ``fedrun.data.brats``. BraTS needs registration: the error raised when it is
    missing says where to get it.
    """
