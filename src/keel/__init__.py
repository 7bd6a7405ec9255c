"""keel: train PyTorch models on contracted datasets with Lightning and Hydra.

Importing ``keel`` is cheap: torch, Lightning and the data are imported only by the
functions that train, so ``python train.py --cfg job`` answers at once.
"""

__version__ = "0.1.0"
