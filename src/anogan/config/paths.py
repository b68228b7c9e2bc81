"""Where the Hydra configuration lives."""

from pathlib import Path


def conf_dir() -> str:
    """The Hydra config folder: ``conf/`` of a checkout, else the ``anogan/conf`` an installed wheel ships."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parents[1] / "conf"
    if (checkout / "config.yaml").is_file():
        return str(checkout)
    return str(package / "conf")
