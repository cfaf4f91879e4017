"""COViaX trainer: the thesis's weakly supervised pipeline on Ray (``coviax train``).

Six stages, each runnable alone and resumable; all state lives in a run folder
(see :mod:`coviax_trainer.rundir`)::

    pseudo-labels  lung masks + 8 voxel features + one mini-batch K-means fitted on
                   voxels sampled across all scans -> sharded slice/label files
    correct        export chosen pseudo-labels for review / import corrected ones
                   (a correction wins over the generated label in every later stage)
    unet-a         2D U-Net trained on the pseudo-labels (Ray Train TorchTrainer)
    relabel        U-Net A labels a larger scan set; low-confidence slices dropped
    unet-b         2D U-Net trained on the second label set, same recipe
    export         the checkpoint the service loads + a model card

Nothing at serve time imports this package. Research use only, not a medical device.
"""

from __future__ import annotations

STAGES = ("pseudo-labels", "correct", "unet-a", "relabel", "unet-b", "export")

__all__ = ["STAGES"]
