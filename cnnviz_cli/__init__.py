"""cnnviz: train a CNN on images (or import one) and see what it learned."""

__version__ = "0.1.0"

__all__ = ["__version__"]
