"""The base of every settings section, core or plugin, and the setting types they share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Setting types shared by the core and every plugin (exported by ``proxy``).
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


class Settings(BaseModel):
    """Base for every config section, core or plugin: strict, immutable.

    Each field's attribute docstring is its documentation (``use_attribute_docstrings``): the
    configuration reference (:mod:`proxy.config.reference`) renders it, and a test requires it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
