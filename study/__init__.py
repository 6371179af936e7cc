"""mtl-litmus study engine: problems, architectures, weighting methods, training and the Ray Tune driver."""

__version__ = "0.1.0"
