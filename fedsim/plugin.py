"""The shared shape of plug-ins that take `params` from the YAML: a pydantic `Params` model,
validated when the scenario is checked (before training) and again when the plug-in is built."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from fedsim.scenario import parse_params


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Configurable:
    """Base for plug-ins configured by `params:`; subclasses set `Params` to their pydantic model."""

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, **params: Any) -> None:
        self.params = parse_params(self.Params, params)

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Raise ValueError (one line naming `params.<key>`) if `params` do not fit."""
        parse_params(cls.Params, params)
