"""Where gaprune's Hydra configs are: `gaprune/conf`, a folder in the installed wheel and a link
to the top-level `conf/` in a checkout (pyproject.toml ships it as package data)."""
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
