"""`model=torchvision.<fn>` and `model=timm.<name>` as Hydra group choices for every
torchvision classifier and every timm model, with no YAML file per builder.

A config source (scheme `gaprune-torchvision://<conf dir>`) serves `model/torchvision.<fn>`
and `model/timm.<name>`: the app's own `model/torchvision.yaml` / `model/timm.yaml` template with
`name` set to the option, so that template is the one source of the keys (`include_linear`,
`params`) and nothing of the default model leaks in. The search-path plugin adds that source only for an app whose config dir holds the
template (gaprune's `conf/`), after the app's own configs, so a real YAML always wins. Unknown
builders fail at composition with one line saying how to list the valid names. Listing the
group shows the YAML files only: torchvision's builders (and timm's models) are an open set, imported only
when one is asked for (torchvision costs ~2.5 s to import).
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
# option prefix -> (template in <conf>/model/, module and function that check the option)
PREFIXES = {"torchvision.": ("torchvision.yaml", "gaprune.models.torchvision_models", "check_classifier"),
            "timm.": ("timm.yaml", "gaprune.models.timm_models", "check_timm_model")}
TEMPLATE = "torchvision.yaml"  # its presence marks gaprune's conf dir


class TorchvisionModelSource(ConfigSource):
    """`model/torchvision.<fn>` and `model/timm.<name>`; the path is the app's config dir."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def _option(self, config_path: str) -> tuple[str, str] | None:
        """(option, its prefix) a config path asks for (None: not one of ours)."""
        group, _, option = config_path.rstrip("/").removesuffix(".yaml").partition("/")
        prefix = next((p for p in PREFIXES if option.startswith(p) and len(option) > len(p)), None)
        if group != GROUP or prefix is None or not (Path(self.path) / GROUP / PREFIXES[prefix][0]).is_file():
            return None
        return option, prefix

    def load_config(self, config_path: str) -> ConfigResult:
        found = self._option(config_path)
        if found is None:
            raise ConfigLoadError(f"Config not found : {config_path}")
        import importlib

        from gaprune.utils.errors import GapruneError

        option, prefix = found
        template, module, check = PREFIXES[prefix]
        try:
            getattr(importlib.import_module(module), check)(option)
        except GapruneError as err:
            raise ConfigLoadError(str(err)) from None
        config = OmegaConf.load(Path(self.path) / GROUP / template)
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
    """Serve torchvision.<fn> / timm.<name> model options to an app whose config dir has model/torchvision.yaml."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for element in list(search_path.get_path()):
            if element.provider == "main":
                scheme, _, rest = element.path.rpartition("://")  # initialize_config_dir gives a bare path
                conf = Path(rest)
                if scheme in ("", "file") and (conf / GROUP / TEMPLATE).is_file():
                    search_path.append("gaprune-torchvision", f"{SCHEME}://{conf}")
                return
