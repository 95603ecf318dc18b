"""Fixtures for block tests: `make_ctx` builds the `BlockContext` a block runs with."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.blocks.base import BlockContext, UsageMeter
from conveyor.settings import LimitsSettings


@pytest.fixture
def make_ctx() -> Callable[..., BlockContext]:
    """Builds a context for one node run; keyword arguments replace its fields (`files=`, `http=`, `limits=`…).

    Files and HTTP default to `None`: the pure blocks never use them, and blocks that do pass real ones.
    """

    def make(**overrides: Any) -> BlockContext:
        ctx = BlockContext(
            job_id="job-test",
            node_id="node-test",
            files=None,  # type: ignore[arg-type]
            http=None,  # type: ignore[arg-type]
            usage=UsageMeter(),
            logger=logging.getLogger("test"),
            limits=LimitsSettings(),
        )
        return dataclasses.replace(ctx, **overrides) if overrides else ctx

    return make
