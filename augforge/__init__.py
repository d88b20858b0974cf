"""augforge: generate realistic, challenging augmentation datasets for binary medical segmentation."""

__version__ = "0.1.0"
