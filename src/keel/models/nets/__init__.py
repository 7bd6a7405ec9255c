"""Plain ``nn.Module`` nets: no Lightning, Hydra or files. They are what gets exported."""

from keel.models.nets.cnn import CNN
from keel.models.nets.mlp import MLP
from keel.models.nets.preprocess import build_preprocess
from keel.models.nets.resnet import ResNet
from keel.models.nets.rnn import RNN
from keel.models.nets.standardize import Standardize
from keel.models.nets.tabular import TabularPreprocess

__all__ = ["CNN", "MLP", "RNN", "ResNet", "Standardize", "TabularPreprocess", "build_preprocess"]
