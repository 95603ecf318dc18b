"""The native recipe document: what a user writes (YAML or JSON) and what each revision stores.

```yaml
name: Greeting
nodes:
  start: {block: chat_input, config: {fields: {text: {type: text, required: true}}}}
  greet: {block: text_template, config: {template: "Hello, {{ text }}!"}, inputs: {text: start.text}}
  out:   {block: recipe_output, inputs: {text: greet.text}}
```
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field

from conveyor.errors import BadRequestError

NODE_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,100}$"


class RetryPolicy(BaseModel):
    """How often a node is tried and how long to wait between tries (doubling after each failure)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(default=1, ge=1, le=20, description="Tries in all, the first included.")
    backoff_s: float = Field(default=0.0, ge=0, le=3600, description="Wait before the second try; doubles after.")


class NodeSpec(BaseModel):
    """One node: which block, its configuration, and where each input comes from (`node.port`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block: str = Field(min_length=1, max_length=200)
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="Input port → `source_node.output_port`.")
    retry: RetryPolicy | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    enabled: bool = Field(default=True, description="Disabled nodes are kept but skipped at run time.")
    title: str | None = Field(default=None, max_length=200)
    meta: dict[str, Any] = Field(
        default_factory=dict, description="Free-form data kept with the node, e.g. what an Omnitool import read."
    )


class RecipeDoc(BaseModel):
    """A recipe as saved: a name, settings and a graph of nodes keyed by node id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    timeout_s: float | None = Field(default=None, gt=0, le=86_400, description="Per-job timeout.")
    on_interrupt: Literal["fail", "resume"] = Field(
        default="fail", description="After a crash: fail the job as `interrupted`, or resume it."
    )
    meta: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, NodeSpec] = Field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON-able document stored in a revision (defaults left out, so it reads like what was written)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True, exclude={"id"}) | {
            "name": self.name,
            "nodes": {
                node_id: node.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {"block": node.block}
                for node_id, node in self.nodes.items()
            },
        }


class _PlainYamlLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses aliases and reads timestamps as plain strings.

    Aliases let a few hundred bytes expand into a document of many megabytes (a "billion laughs"),
    and a recipe never needs them; dates are not JSON, so `2020-01-01` stays the string it looks like.
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _AliasRefusedError(None, None, "YAML aliases are not accepted", mark)
        return super().compose_node(parent, index)


class _AliasRefusedError(yaml.MarkedYAMLError):
    """A YAML alias was met (see `_PlainYamlLoader`)."""


_PlainYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

# orjson's own messages for its depth limits (1024 levels reading, 255 writing): the only way it tells them apart.
_TOO_DEEP_MESSAGES = ("depth limit exceeded", "Recursion limit reached")


def parse_recipe_text(text: str | bytes, content_type: str = "application/json") -> Any:
    """Parses a recipe body as JSON or YAML (by content type; JSON first when unsure) into plain JSON data.

    `BadRequestError` (400) for a body that does not parse, uses YAML aliases, holds values JSON cannot
    (bytes, sets, dates, non-string keys, huge integers), or nests deeper than a revision can be stored.
    """
    try:
        return _plain(_parse(text, content_type))
    except RecursionError:
        raise BadRequestError("body nests too deeply") from None


def _parse(text: str | bytes, content_type: str) -> Any:
    is_yaml = "yaml" in content_type or "yml" in content_type
    if not is_yaml:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if any(message in str(exc) for message in _TOO_DEEP_MESSAGES):
                raise BadRequestError("body nests too deeply") from None
            if "json" in content_type:
                raise BadRequestError(f"body is not valid JSON: {exc}") from None
    try:
        return yaml.load(text, Loader=_PlainYamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except _AliasRefusedError:
        raise BadRequestError("YAML aliases are not accepted") from None
    except yaml.YAMLError as exc:
        raise BadRequestError(f"body is not valid YAML: {exc}") from None


def _plain(value: Any) -> Any:
    """`value` as JSON data, or `BadRequestError`: a round trip through the encoder every revision is saved with."""
    try:
        return orjson.loads(orjson.dumps(value, option=orjson.OPT_PASSTHROUGH_DATETIME))
    except (orjson.JSONEncodeError, TypeError) as exc:
        if any(message in str(exc) for message in _TOO_DEEP_MESSAGES):
            raise BadRequestError("body nests too deeply") from None
        raise BadRequestError("recipe must be plain JSON data") from None
