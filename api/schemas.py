"""Request schemas: they validate requests and generate the OpenAPI document."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.tables import PRIORITIES

Arch = Literal["efficientnet_lite0", "mobilenet_v3_small"]
Priority = Literal[PRIORITIES]
PRIORITY_HELP = "its share of the workers beside other jobs: low, normal or high (high: ops tokens only)"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TrainParams(Strict):
    """The training CLI's options; unset ones take the default recipe."""

    arch: Arch | None = None
    weights: str | None = Field(None, description="none | imagenet | a weights file inside the allowed roots")
    label_level: Literal["coarse", "fine"] | None = None
    epochs: Annotated[int, Field(ge=1, le=1000)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=1024)] | None = None
    learning_rate: Annotated[float, Field(gt=0, lt=1)] | None = None
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | None = None
    mix: Annotated[float, Field(ge=0, le=1)] | None = None
    freeze: Annotated[int, Field(ge=0, le=20)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    train_limit: Annotated[int, Field(ge=1)] | None = None
    val_limit: Annotated[int, Field(ge=1)] | None = None
    data_dir: str | None = Field(None, description="a dataset inside the allowed input roots")
    input_size: Annotated[int, Field(ge=32, le=512)] | None = None


class PredictInput(Strict):
    folder: str | None = Field(None, description="a folder inside the allowed input roots")
    paths: Annotated[list[str], Field(min_length=1, max_length=100_000)] | None = Field(
        None, description="a manifest: files inside the allowed input roots"
    )
    recursive: bool = Field(True, description="folder: include subfolders")
    pattern: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="folder: a glob on file names, e.g. '*.jpg' (default: the image extensions)"
    )

    @model_validator(mode="after")
    def exactly_one_source(self):
        if (self.folder is None) == (self.paths is None):
            raise ValueError("give exactly one of 'folder' or 'paths'")
        return self


class TrainJobRequest(Strict):
    type: Literal["train"]
    params: TrainParams = TrainParams()


class PredictJobRequest(Strict):
    type: Literal["predict"]
    model: str = Field("latest", description="a model id, 'latest' or an alias such as 'production'")
    input: PredictInput
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
