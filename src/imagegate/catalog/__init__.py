"""Model id -> capabilities, loaded from ``models.toml``."""

from imagegate.catalog.models import Catalog, FreeSizeRule, Model, load_catalog
from imagegate.catalog.sizes import Size, parse_size

__all__ = ["Catalog", "FreeSizeRule", "Model", "Size", "load_catalog", "parse_size"]
