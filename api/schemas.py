"""Request schemas: they validate requests and generate the OpenAPI document. A job's request is its
kind's (service/kinds.py, service/specs.py): POST /jobs takes any of them, told apart by "type"."""

from typing import Annotated, Union

from pydantic import Field

from service.kinds import KINDS
from service.specs import Gate, Strict

JobRequest = Annotated[Union[tuple(kind.request for kind in KINDS.values())], Field(discriminator="type")]  # noqa: UP007


class AliasRequest(Strict):
    model_id: str
    gate: Gate | None = Field(None, description="moved only if the model passes it; else 409 with the figures")
