"""From the config's groups to objects, for training and use alike: ``build`` instantiates a
group (``dataset``, ``model``, ``loss``, ``noise``) with config mistakes re-worded for the user,
``load_data`` the dataset cut to ``dataset.classes``."""
from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aecli.config import given
from aecli.data import ImageData, keep_classes
from aecli.errors import AecliError, ConfigError


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[group])``, with config mistakes re-worded for the user
    (Hydra's own message hides the cause behind 'see chained exception above')."""
    try:
        return instantiate(given(cfg[group]), **kwargs)  # a user's own class: only the keys given for it
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, AecliError):
            raise cause from None
        target = OmegaConf.select(cfg, f"{group}._target_")
        fix = f"check the keys of conf/{group}/ against {target}'s arguments" if isinstance(cause, TypeError) \
            else f"{target} failed on its inputs (above): check them"  # the data, not the config
        raise ConfigError(group, f"cannot build {target}: {cause or e}", fix) from None


def load_data(cfg: DictConfig, fitted: dict[str, Any] | None = None) -> ImageData:
    """The dataset ``cfg.dataset`` names, its train and val splits cut to ``dataset.classes``
    when that is set (``aecli.data.keep_classes``; the loaders never see the key). ``fitted``: a
    vector dataset's stored transform (a checkpoint's ``data_transform``), applied instead of
    fitting a new one, so a resumed or opened run sees the vectors it trained on."""
    node = OmegaConf.to_container(cfg.dataset, resolve=True)
    classes = node.pop("classes", None)
    # _convert_: the transform reaches the loader as plain dicts and lists, as it was stored
    extra = {"fitted": fitted, "_convert_": "all"} if fitted is not None else {}
    return keep_classes(build(OmegaConf.create({"dataset": node}), "dataset", **extra), classes)
