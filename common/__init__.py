"""Shared code of the bundle collection: networks, RNN layers, metrics, transforms, handlers and data helpers."""

__version__ = "0.1.0"
