"""Built-in models and data sets that need no download."""

from .convnets import VGG, CifarResNet, MobileNetV2
from .datasets import DATASETS, DataSplit, digits, get_dataset, mnist1d, stratified_split
from .models import MODELS, RECIPE_DATASETS, RECIPES, example_inputs, get_model, input_shape, register_model
from .small import CNN1D, MLP, LeNet5
from .userdata import load_csv, load_npz, load_user_data
from .vit import ViT

__all__ = [
    "CNN1D",
    "DATASETS",
    "MLP",
    "MODELS",
    "RECIPES",
    "RECIPE_DATASETS",
    "VGG",
    "CifarResNet",
    "DataSplit",
    "LeNet5",
    "MobileNetV2",
    "ViT",
    "digits",
    "example_inputs",
    "get_dataset",
    "get_model",
    "input_shape",
    "load_csv",
    "load_npz",
    "load_user_data",
    "mnist1d",
    "register_model",
    "stratified_split",
]
