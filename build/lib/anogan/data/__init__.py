from anogan.data.cifar10 import CLASSES, CIFAR10AnomalyDataModule, DataError, class_index, stratified_subset

__all__ = ["CLASSES", "CIFAR10AnomalyDataModule", "DataError", "class_index", "stratified_subset"]
