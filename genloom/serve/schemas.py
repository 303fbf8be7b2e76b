"""Request bodies (OpenAI's fields, and genloom's extras): NaN and infinities are refused, and so is every
field a body does not define (`extra="forbid"`): a field genloom does not implement is a 400 that names it,
never silently ignored. `OPENAI_FIELDS` lists each endpoint's fields in OpenAI's API, so the error can say
whether a refused field is an OpenAI one genloom does not implement or not a field of the endpoint at all.
The routes check what depends on the model or the server's limits."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StreamOptions", "WatermarkField", "ImageWatermarkField", "SamplingRequest", "CompletionRequest",
           "ContentPart", "Message", "ToolCall", "Tool", "ChatRequest", "ImageRequest", "BODIES", "OPENAI_FIELDS",
           "accepted_fields"]


class _Body(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


class WatermarkField(_Body):
    """A text request's `watermark` (genloom's; serve/detect.py): the key, unless the server has one."""

    key: Optional[str] = None
    scheme: Literal["green", "gumbel"] = "green"
    context: int = Field(0, ge=0, le=16)
    gamma: float = Field(0.25, gt=0, lt=1)
    delta: float = Field(2.5, ge=0, le=20)


class ImageWatermarkField(_Body):
    """An image request's `watermark` (genloom's; serve/detect.py): the key, unless the server has one."""

    key: Optional[str] = None


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
    user: Optional[str] = None                  # recorded nowhere; accepted because clients send it
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: Optional[dict[str, float]] = None   # token id (as a string) -> bias in [-100, 100]
    # genloom extras
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    watermark: Union[bool, WatermarkField, None] = None     # mark the text (serve/detect.py)


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str], list[int], list[list[int]]] = ""     # text(s), or token ids (one list per prompt)
    max_tokens: Optional[int] = Field(None, ge=0)     # 0 with echo and logprobs: score the prompt only
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    echo: bool = False


class ContentPart(_Body):
    type: Literal["text"] = "text"
    text: str


class CalledFunction(_Body):
    name: str
    arguments: str                              # the arguments as JSON text


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None   # may be left out only beside tool_calls
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None  # an assistant's earlier calls
    tool_call_id: Optional[str] = None           # a tool message: the call it answers
    refusal: Optional[str] = None                # an assistant's refusal echoed back: read as its content


class FunctionSpec(_Body):
    name: str                                   # checked by genloom.lm.tools (letters, digits, _ and -)
    description: Optional[str] = None
    parameters: Optional[dict] = None           # a JSON schema of an object
    strict: Optional[bool] = None


class Tool(_Body):
    type: str                                   # "function" (genloom.lm.tools says so in a 400 otherwise)
    function: FunctionSpec


class JSONSchemaFormat(_Body):
    name: str = Field("response", max_length=64)
    description: Optional[str] = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaFormat] = None


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = None
    # "auto", "none", "required" or {"type": "function", "function": {"name": ...}}, checked by genloom.lm.tools
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: bool = True


class ImageRequest(_Body):
    model: str
    prompt: Optional[str] = None                # text-to-image: the description; class models: a label
    n: int = Field(1, ge=1)
    size: Optional[str] = None                  # "WxH"; must be the model's size
    response_format: Literal["b64_json", "url"] = "b64_json"
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
    watermark: Union[bool, ImageWatermarkField, None] = None     # mark the images (serve/detect.py)


BODIES: dict[str, type[BaseModel]] = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatRequest,
                                      "/v1/images/generations": ImageRequest}

# The request fields of OpenAI's API per endpoint (and of a chat message), as its reference lists them.
OPENAI_FIELDS: dict[str, frozenset[str]] = {
    "/v1/completions": frozenset(
        "model prompt best_of echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed stop "
        "stream stream_options suffix temperature top_p user".split()),
    "/v1/chat/completions": frozenset(
        "messages model audio frequency_penalty function_call functions logit_bias logprobs max_completion_tokens "
        "max_tokens metadata modalities n parallel_tool_calls prediction presence_penalty prompt_cache_key "
        "reasoning_effort response_format safety_identifier seed service_tier stop store stream stream_options "
        "temperature tool_choice tools top_logprobs top_p user verbosity web_search_options".split()),
    "/v1/images/generations": frozenset(
        "prompt background model moderation n output_compression output_format partial_images quality "
        "response_format size stream style user".split()),
    "message": frozenset("role content name tool_calls tool_call_id refusal audio function_call".split()),
}


def accepted_fields(body: type[BaseModel]) -> list[str]:
    return sorted(body.model_fields)
