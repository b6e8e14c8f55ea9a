"""MENDICANT Desktop: offline skin-lesion decision support."""

__version__ = "0.1.0"
