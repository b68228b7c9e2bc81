from anogan.config.choices import CLASSES, class_index
from anogan.data.cifar10 import CIFAR10AnomalyDataModule
from anogan.data.splits import stratified_subset
from anogan.utils.errors import DataError

__all__ = ["CLASSES", "CIFAR10AnomalyDataModule", "DataError", "class_index", "stratified_subset"]
