"""The catalog: ``models.toml`` turned into immutable :class:`Model` objects."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from imagegate.catalog.sizes import FreeSizeRule, Size, parse_size, ratio_from_prompt


class CatalogError(Exception):
    pass


@dataclass(frozen=True)
class Model:
    id: str
    operations: tuple[str, ...]
    sizes: tuple[Size, ...] | None  # None: free-form, see ``size_rule``
    default_size: Size
    qualities: tuple[str, ...]
    auto_quality: str
    n_max: int
    output_formats: tuple[str, ...]
    backgrounds: tuple[str, ...]
    input_fidelity: tuple[str, ...]
    max_input_images: int
    max_prompt_chars: int
    params: frozenset[str]
    token_table: str
    response: str
    default_response_format: str
    engine: str
    description: str = ""
    edit_square_png_only: bool = False
    # The model rewrites prompts and its answers say how (each item's revised_prompt), known only once read.
    revises_prompts: bool = False
    # size=auto is taken (from the prompt's ratio, or an edit's image); without it, as DALL·E upstream, 'auto' is
    # refused and a request without a size gets default_size.
    size_auto: bool = True
    size_rule: FreeSizeRule | None = None
    created: int = 1_700_000_000
    owned_by: str = "imagegate"

    @property
    def free_sizes(self) -> bool:
        return self.sizes is None

    @property
    def supports_transparency(self) -> bool:
        return "transparent" in self.backgrounds

    @property
    def reports_usage(self) -> bool:
        return self.response == "gpt"

    def supported_sizes(self) -> str:
        """What a model with a fixed list of sizes takes, as an error message says it."""
        assert self.sizes is not None
        allowed = ", ".join(f"'{s}'" for s in self.sizes)
        return f"supported values are {allowed}" + (" and 'auto'" if self.size_auto else "")

    def size_violation(self, size: Size) -> str | None:
        if self.sizes is not None:
            return None if size in self.sizes else self.supported_sizes()
        assert self.size_rule is not None
        return self.size_rule.violation(size)

    def auto_size(self, prompt: str, input_ratio: float | None = None) -> Size:
        """``size=auto``: the prompt's stated aspect ratio, else the first input image's (edits), else the
        default size."""
        ratio = ratio_from_prompt(prompt) or input_ratio
        if ratio is None:
            return self.default_size
        if self.sizes is None:
            assert self.size_rule is not None
            return self.size_rule.fit(ratio, self.default_size.pixels)
        return min(self.sizes, key=lambda s: (abs(math.log(s.ratio / ratio)), -s.pixels))

    def capabilities(self) -> dict[str, Any]:
        """What ``/v1/models`` shows about this model."""
        if self.sizes is None:
            assert self.size_rule is not None
            rule = self.size_rule
            sizes: Any = {
                "rule": "free-form",
                "multiple_of": rule.multiple_of,
                "max_edge": rule.max_edge,
                "max_ratio": rule.max_ratio,
                "min_pixels": rule.min_pixels,
                "max_pixels": rule.max_pixels,
            }
        else:
            sizes = [str(s) for s in self.sizes]
        return {
            "operations": list(self.operations),
            "sizes": sizes,
            "default_size": str(self.default_size),
            "qualities": list(self.qualities),
            "n_max": self.n_max,
            "output_formats": list(self.output_formats),
            "backgrounds": list(self.backgrounds),
            "input_fidelity": list(self.input_fidelity),
            "max_input_images": self.max_input_images,
            "max_prompt_chars": self.max_prompt_chars,
            "params": sorted(self.params),
            "engine": self.engine,
        }


_LIST_KEYS = {"operations", "qualities", "output_formats", "backgrounds", "input_fidelity"}


def _build_model(entry: dict[str, Any], rule: FreeSizeRule) -> Model:
    known = {f.name for f in fields(Model)}
    unknown = set(entry) - known - {"profile"}
    if unknown:
        raise CatalogError(f"model '{entry.get('id')}': unknown keys {sorted(unknown)}")
    values = {k: v for k, v in entry.items() if k != "profile"}
    try:
        raw_sizes = values.pop("sizes")
        if raw_sizes == "free":
            values["sizes"] = None
            values["size_rule"] = rule
        else:
            parsed = [parse_size(s) for s in raw_sizes]
            if None in parsed:
                raise CatalogError(f"model '{entry['id']}': bad size in {raw_sizes}")
            values["sizes"] = tuple(parsed)
        default = parse_size(values["default_size"])
        if default is None:
            raise CatalogError(f"model '{entry['id']}': bad default_size")
        values["default_size"] = default
        for key in _LIST_KEYS:
            values[key] = tuple(values[key])
        values["params"] = frozenset(values["params"])
        return Model(**values)
    except KeyError as exc:
        raise CatalogError(f"model '{entry.get('id')}': missing key {exc}") from None
    except TypeError as exc:
        raise CatalogError(f"model '{entry.get('id')}': {exc}") from None


@dataclass(frozen=True)
class Catalog:
    models: dict[str, Model] = field(default_factory=dict)

    def get(self, model_id: str) -> Model | None:
        return self.models.get(model_id)

    def __iter__(self) -> Iterator[Model]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def ids(self) -> list[str]:
        return list(self.models)


def load_catalog(path: Path | None = None) -> Catalog:
    if path is None:
        text = resources.files("imagegate.catalog").joinpath("models.toml").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    data = tomllib.loads(text)
    rule = FreeSizeRule(**data.get("size_rules", {}).get("free", {}))
    profiles = data.get("profiles", {})
    models: dict[str, Model] = {}
    for entry in data.get("models", []):
        merged: dict[str, Any] = {}
        if "profile" in entry:
            if entry["profile"] not in profiles:
                raise CatalogError(f"model '{entry.get('id')}': unknown profile '{entry['profile']}'")
            merged.update(profiles[entry["profile"]])
        merged.update(entry)
        model = _build_model(merged, rule)
        if model.id in models:
            raise CatalogError(f"model '{model.id}' is listed twice")
        models[model.id] = model
    return Catalog(models)
