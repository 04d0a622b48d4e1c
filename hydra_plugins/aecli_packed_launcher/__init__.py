"""aecli's Hydra launcher plugin: ``hydra/launcher=packed`` (``aecli.training.packing``)."""
