"""Bodies of the admin API's endpoints that the web console needs beyond the resources' own."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class WhoAmI(BaseModel):
    """The token a request was made with, as the console shows it and decides which actions to
    offer (the API still checks every request's role)."""

    token_id: str
    name: str = Field(description="The token's name, as given when it was made.")
    role: Literal["viewer", "operator", "admin"]
    tenant: str = Field(description="The tenant the token belongs to.")
