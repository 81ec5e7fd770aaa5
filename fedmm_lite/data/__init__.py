"""Datasets: the folder format, the offline world, converted presets, the leave-one-out split,
negative sampling."""
from .converters import register_converter
from .dataset import Dataset, LoadReport, stats_table
from .folder import RawData, read_folder
from .sampling import NegativeSampler
from .sources import PRESETS, load_dataset
from .split import build_dataset

__all__ = ["Dataset", "LoadReport", "stats_table", "RawData", "read_folder", "NegativeSampler", "PRESETS",
           "load_dataset", "build_dataset", "register_converter"]
