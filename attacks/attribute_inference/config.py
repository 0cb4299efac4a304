"""The `attribute_inference:` section of a scenario (owned by the attribute-inference family)."""

from __future__ import annotations

from pydantic import Field

from fedsim.scenario import Section


class AttributeConfig(Section):
    """Which attribute is sensitive, what else the attacker knows, and whom it attacks."""

    attribute: str = Field("sex", description="the sensitive column of the clinical records (sex, site, "
                           "diagnosis, a measurement)")
    known: list[str] | None = Field(None, description="the record columns the attacker knows of each person "
                                    "(default: all but the attribute and what restates it)")
    records: int = Field(200, ge=4, le=100_000, description="members attacked (people the model trained on), "
                         "and as many non-members where there are")
    auxiliary: int = Field(200, ge=8, le=100_000, description="the attacker's own records with the attribute: "
                           "people of the same population (the server's held-out records where the dataset has "
                           "no population sample)")
    bins: int = Field(3, ge=2, le=20, description="a numeric attribute is guessed as one of this many quantile "
                      "bins of the attacker's records")
