"""Tests for `conveyor.blocks.io`'s Omnitool edge blocks: `chat_output` hands on, `recipe_metadata` is inert."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from conveyor.blocks.base import BlockContext, PortType
from conveyor.blocks.io import ChatOutput, RecipeMetadata

Ctx = Callable[..., BlockContext]
IMAGE = {"fid": "a" * 32, "name": "a.png", "mime": "image/png", "size": 3}


async def test_chat_output_hands_on_what_it_is_given(make_ctx: Ctx) -> None:
    block = ChatOutput()
    config = ChatOutput.Config()
    inputs, outputs = block.ports(config, [])
    assert list(inputs) == ["text", "images", "audio", "documents", "videos", "files", "object"]
    assert inputs == outputs and not any(port.required for port in inputs.values())
    assert inputs["images"].type == PortType.IMAGE and inputs["images"].many
    assert inputs["object"].type == PortType.JSON and inputs["text"].type == PortType.TEXT
    out = await block.run(make_ctx(), config, {"text": "hi", "images": [IMAGE], "object": {"a": 1}, "audio": None})
    assert out == {"text": "hi", "images": [IMAGE], "object": {"a": 1}}


def test_chat_output_text_type_is_one_of_omnitools() -> None:
    assert ChatOutput.Config().text_type == "text/markdown"
    assert ChatOutput.Config(text_type="text/markdown-code").text_type == "text/markdown-code"
    with pytest.raises(ValidationError):
        ChatOutput.Config.model_validate({"text_type": "text/html"})


async def test_recipe_metadata_keeps_the_card_and_gives_nothing(make_ctx: Ctx) -> None:
    block = RecipeMetadata()
    config = RecipeMetadata.Config(title="Essay Reviewer", tags=["#education"], license="CC0", help="## Help")
    inputs, outputs = block.ports(config, [])
    assert inputs["usage"].type == PortType.JSON and not inputs["usage"].required
    assert outputs["text"].type == PortType.TEXT
    assert await block.run(make_ctx(), config, {"usage": {"x": 1}}) == {}


@pytest.mark.parametrize(
    "config",
    [{"title": "t" * 201}, {"tags": "not a list"}, {"tags": ["x" * 201]}, {"tags": ["t"] * 101}, {"colour": "red"}],
)
def test_recipe_metadata_config_refuses_bad_values(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RecipeMetadata.Config.model_validate(config)
