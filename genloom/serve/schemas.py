"""Request bodies (OpenAI's fields, and genloom's extras): NaN and infinities are refused; unknown fields are
ignored, as OpenAI does. The routes check what depends on the model or the server's limits."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StreamOptions", "SamplingRequest", "CompletionRequest", "ContentPart", "Message", "ChatRequest",
           "ImageRequest"]


class _Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingRequest(_Body):
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    # genloom extras
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    user: Optional[str] = None


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str]] = ""
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: bool = False


class ContentPart(_Body):
    type: Literal["text"] = "text"
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart]]
    name: Optional[str] = None


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class ImageRequest(_Body):
    model: str
    prompt: Optional[str] = None                # text-to-image: the description; class models: a label
    n: int = Field(1, ge=1)
    size: Optional[str] = None                  # "WxH"; must be the model's size
    response_format: Literal["b64_json", "url"] = "b64_json"
    quality: Optional[str] = None
    style: Optional[str] = None
    user: Optional[str] = None
    # genloom extras
    label: Optional[str] = None
    negative_prompt: Optional[str] = None
    steps: Optional[int] = Field(None, ge=1)
    guidance: Optional[float] = Field(None, ge=0, le=50)
    sampler: Optional[Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun"]] = None
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    truncation: Optional[float] = Field(None, gt=0, le=2)
    stream: bool = False                       # server-sent progress events, then the result
