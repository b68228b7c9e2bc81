from anogan.data.cifar10 import CLASSES, CIFAR10AnomalyDataModule, class_index
from anogan.data.splits import stratified_subset
from anogan.utils.errors import DataError

__all__ = ["CLASSES", "CIFAR10AnomalyDataModule", "DataError", "class_index", "stratified_subset"]
