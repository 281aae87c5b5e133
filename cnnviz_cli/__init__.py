"""cnnviz: train a small CNN on MNIST-like images and see what it learned."""

__version__ = "0.1.0"

__all__ = ["__version__"]
