"""Request schemas: they validate requests and generate the OpenAPI document."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from grocery.config import SERVICE_PARAMS, Param
from service.tables import PRIORITIES

Priority = Literal[PRIORITIES]
PRIORITY_HELP = "its share of the workers beside other jobs: low, normal or high (high: ops tokens only)"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def request_field(p: Param) -> tuple:
    """A TrainParams field: unset (None) takes the recipe's default; bounds and choices as declared."""
    kind = Literal[p.choices] if p.choices else p.kind
    if p.bounds:
        kind = Annotated[kind, Field(**p.bounds)]
    return kind | None, Field(None, description=p.service_help)


TrainParams = create_model(
    "TrainParams",
    __base__=Strict,
    __doc__="The training CLI's options; unset ones take the default recipe.",
    __module__=__name__,
    **{p.name: request_field(p) for p in SERVICE_PARAMS},
)


class PredictInput(Strict):
    folder: str | None = Field(None, description="a folder inside the allowed input roots")
    url: Annotated[str, Field(pattern=r"^s3://", max_length=2048)] | None = Field(
        None, description="an object prefix inside the allowed input roots, e.g. s3://bucket/photos/"
    )
    paths: Annotated[list[str], Field(min_length=1, max_length=100_000)] | None = Field(
        None, description="a manifest: files or object URLs (s3://...) inside the allowed input roots"
    )
    recursive: bool = Field(True, description="folder or url: include subfolders (keys below further '/')")
    pattern: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="folder or url: a glob on file names, e.g. '*.jpg' (default: the image extensions)"
    )

    @model_validator(mode="after")
    def exactly_one_source(self):
        if sum(source is not None for source in (self.folder, self.url, self.paths)) != 1:
            raise ValueError("give exactly one of 'folder', 'url' or 'paths'")
        return self


class PredictOutput(Strict):
    # Its form (s3://bucket/key.parquet) is checked by the API, which answers 400 naming the field.
    url: Annotated[str, Field(min_length=1, max_length=2048)] = Field(
        description="an object to write the results to as Parquet when the job ends, e.g. s3://bucket/run.parquet"
    )


class TrainJobRequest(Strict):
    type: Literal["train"]
    params: TrainParams = TrainParams()


class PredictJobRequest(Strict):
    type: Literal["predict"]
    model: str = Field("latest", description="a model id, 'latest' or an alias such as 'production'")
    input: PredictInput
    output: PredictOutput | None = Field(None, description="where the job also writes its results when it ends")
    shard_size: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="files per shard task (default GROCERY_SHARD_SIZE)"
    )
    max_failed_fraction: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="the job fails when more of its files fail (default GROCERY_MAX_FAILED_FRACTION)"
    )
    priority: Priority = Field("normal", description=PRIORITY_HELP)


JobRequest = Annotated[TrainJobRequest | PredictJobRequest, Field(discriminator="type")]


class AliasRequest(Strict):
    model_id: str
