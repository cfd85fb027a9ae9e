"""The dataset and its loader under the reference's module name (utils/datasets.py), for scripts that import them
from there; they live in utils/data/."""
from utils.data.dataloaders import create_dataloader
from utils.data.datasets import LoadImagesAndLabels

__all__ = ['LoadImagesAndLabels', 'create_dataloader']
