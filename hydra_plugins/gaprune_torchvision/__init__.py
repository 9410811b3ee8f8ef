"""`model=torchvision.<fn>` as a Hydra group choice for every torchvision classifier, with no
YAML file per builder.

A config source (scheme `gaprune-torchvision://<conf dir>`) serves `model/torchvision.<fn>`:
the app's own `model/torchvision.yaml` template with `name: torchvision.<fn>`, so that template
is the one source of the keys (`include_linear`, `params`) and nothing of the default model
leaks in. The search-path plugin adds that source only for an app whose config dir holds the
template (gaprune's `conf/`), after the app's own configs, so a real YAML always wins. Unknown
builders fail at composition with one line saying how to list the valid names. Listing the
group shows the YAML files only: torchvision's builders are an open set, imported only when one
is asked for (torchvision costs ~2.5 s to import).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

SCHEME = "gaprune-torchvision"
GROUP = "model"
PREFIX = "torchvision."
TEMPLATE = "torchvision.yaml"


class TorchvisionModelSource(ConfigSource):
    """`model/torchvision.<fn>` for any <fn>; the path is the app's config dir."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _option(self, config_path: str) -> str | None:
        """The torchvision.<fn> option a config path asks for (None: not one of ours)."""
        group, _, option = config_path.rstrip("/").removesuffix(".yaml").partition("/")
        return option if group == GROUP and option.startswith(PREFIX) and len(option) > len(PREFIX) else None

    def load_config(self, config_path: str) -> ConfigResult:
        option = self._option(config_path)
        if option is None:
            raise ConfigLoadError(f"Config not found : {config_path}")
        from gaprune.models.torchvision_models import check_classifier
        from gaprune.utils.errors import GapruneError

        try:
            check_classifier(option)
        except GapruneError as err:
            raise ConfigLoadError(str(err)) from None
        config = OmegaConf.load(Path(self.path) / GROUP / TEMPLATE)
        config.name = option
        return ConfigResult(config=config, path=f"{SCHEME}://{self.path}", provider=self.provider,
                            header={"package": None})

    def available(self) -> bool:
        return (Path(self.path) / GROUP / TEMPLATE).is_file()

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") == GROUP

    def is_config(self, config_path: str) -> bool:
        return self._option(config_path) is not None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        return []


class TorchvisionModelSearchPath(SearchPathPlugin):
    """Serve torchvision.<fn> model options to an app whose config dir has model/torchvision.yaml."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for element in list(search_path.get_path()):
            if element.provider == "main":
                scheme, _, rest = element.path.rpartition("://")  # initialize_config_dir gives a bare path
                conf = Path(rest)
                if scheme in ("", "file") and (conf / GROUP / TEMPLATE).is_file():
                    search_path.append("gaprune-torchvision", f"{SCHEME}://{conf}")
                return
