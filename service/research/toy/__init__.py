"""The paper's synthetic toy video datasets (Sec. 3.2): see :mod:`service.research.toy.data`."""

from service.research.toy.data import (
    BACKGROUNDS,
    DIRECTIONS,
    NUM_CLASSES,
    OBJECTS,
    ClipSet,
    ToyDataset,
    generate_toy_dataset,
    label_names,
    load_toy_dataset,
    write_mp4,
    write_toy_dataset,
)

__all__ = [
    "BACKGROUNDS",
    "DIRECTIONS",
    "NUM_CLASSES",
    "OBJECTS",
    "ClipSet",
    "ToyDataset",
    "generate_toy_dataset",
    "label_names",
    "load_toy_dataset",
    "write_mp4",
    "write_toy_dataset",
]
