"""The shared shape of plug-ins that take `params` from the YAML: a pydantic `Params` model,
validated when the scenario is checked (before training) and again where the plug-in is built."""

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
        self.params = self.parse(params)

    @classmethod
    def parse(cls, params: dict[str, Any]) -> Any:
        """`params` validated into `Params`; ValueError (one line naming `params.<key>`) if they do not fit."""
        return parse_params(cls.Params, params)
