"""aecli: train, compare and reuse the classic autoencoders from one Hydra-configured CLI."""

__version__ = "0.1.0"
