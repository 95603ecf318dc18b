"""Blocks: the kinds of node a recipe is made of. `default_registry()` lists every built-in block."""

from __future__ import annotations

from conveyor.blocks.base import Block, BlockRegistry


def builtin_blocks() -> list[Block]:
    """One instance of every built-in block."""
    from conveyor.blocks import control, documents, http, images, inputs, io, jsondata, llm, missing, recipes, text
    from conveyor.blocks.ask_data import AskData

    return [
        io.ChatInput(),
        io.RecipeOutput(),
        io.ChatOutput(),
        io.RecipeMetadata(),
        text.TextTemplate(),
        text.TextReplace(),
        text.MultiTextReplace(),
        text.TextSplitter(),
        text.TextToJson(),
        jsondata.Jsonata(),
        jsondata.JsonPacker(),
        jsondata.JsonUnpacker(),
        inputs.NumberInput(),
        inputs.BooleanInput(),
        inputs.InputText(),
        inputs.JsonInput(),
        images.PrepareImage(),
        images.ImageInfo(),
        documents.WriteDocument(),
        http.HttpRequestBlock(),
        control.Delay(),
        recipes.RunRecipe(),
        llm.LlmChat(),
        llm.LlmStructured(),
        AskData(),
        missing.MissingBlock(),
    ]


def default_registry() -> BlockRegistry:
    """A new registry holding every built-in block (one per app; no global registry)."""
    return BlockRegistry(builtin_blocks())
