"""Tests for `conveyor.blocks.images`: `prepare_image` makes real new files, `image_info` reads headers."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import pytest
from PIL import Image

from conveyor.blocks.base import BlockContext, BlockInputError, FileRef, PortType, UsageMeter
from conveyor.blocks.images import ImageInfo, PrepareImage
from conveyor.settings import LimitsSettings
from conveyor.store.files import FileService

RED, BLUE = (255, 0, 0), (0, 0, 255)


def context(files: FileService, limits: LimitsSettings | None = None) -> BlockContext:
    return BlockContext(
        job_id="j1",
        node_id="n1",
        files=files,
        http=files.http,  # type: ignore[arg-type]  # the guarded client; blocks here never call it
        usage=UsageMeter(),
        logger=logging.getLogger("test"),
        limits=limits or LimitsSettings(),
    )


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def halves(size: tuple[int, int] = (200, 100)) -> Image.Image:
    """Red on the left half, blue on the right."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


async def stored(files: FileService, data: bytes, name: str = "source.png") -> FileRef:
    return await files.save_bytes(data, name=name, mime="application/octet-stream")


async def opened(files: FileService, ref: FileRef) -> Image.Image:
    image = Image.open(io.BytesIO(await files.read_bytes(ref["fid"])))
    image.load()
    return image


async def prepare(files: FileService, images: list[Any], **config: Any) -> list[FileRef]:
    block = PrepareImage()
    outputs = await block.run(context(files), PrepareImage.Config(**config), {"images": images})
    result: list[FileRef] = outputs["images"]
    return result


def test_ports() -> None:
    inputs, outputs = PrepareImage().ports(PrepareImage.Config(), [])
    assert inputs["images"].type == PortType.IMAGE and inputs["images"].many and inputs["images"].required
    assert outputs["images"].label() == "image[]"
    inputs, outputs = ImageInfo().ports(ImageInfo.Config(), [])
    assert set(outputs) == {"info", "width", "height"}


@pytest.mark.parametrize(
    ("config", "size"),
    [
        ({}, (200, 100)),
        ({"width": 50}, (50, 25)),
        ({"height": 50}, (100, 50)),
        ({"width": 60, "height": 60}, (60, 60)),  # cover is the default
        ({"width": 60, "height": 60, "fit": "contain"}, (60, 60)),
        ({"width": 60, "height": 60, "fit": "fill"}, (60, 60)),
        ({"width": 60, "height": 60, "fit": "inside"}, (60, 30)),
        ({"width": 60, "height": 60, "fit": "outside"}, (120, 60)),
        ({"crop": {"left": 10, "top": 20, "width": 40, "height": 30}}, (40, 30)),
        ({"crop": {"left": 100, "top": 0, "width": 100, "height": 100}, "width": 10}, (10, 10)),
    ],
)
async def test_sizes(config: dict[str, Any], size: tuple[int, int], file_service: FileService) -> None:
    source = await stored(file_service, encode(halves(), "PNG"))
    [out] = await prepare(file_service, [source], **config)
    image = await opened(file_service, out)
    assert image.size == size
    assert image.format == "PNG"  # format defaults to keep
    assert out["fid"] != source["fid"] and out["mime"] == "image/png" and out["name"] == "source.png"


async def test_cover_crops_from_the_centre_and_contain_pads(file_service: FileService) -> None:
    source = await stored(file_service, encode(halves(), "PNG"))
    [cover] = await prepare(file_service, [source], width=100, height=100, fit="cover")
    image = (await opened(file_service, cover)).convert("RGB")
    assert image.getpixel((5, 50)) == RED and image.getpixel((95, 50)) == BLUE
    [contain] = await prepare(file_service, [source], width=100, height=100, fit="contain", background="#00ff00")
    image = (await opened(file_service, contain)).convert("RGB")
    assert image.getpixel((50, 5)) == (0, 255, 0)  # the letterbox
    assert image.getpixel((10, 50)) == RED and image.getpixel((90, 50)) == BLUE


@pytest.mark.parametrize(
    ("fmt", "mime", "pil_format", "mode"),
    [
        ("webp", "image/webp", "WEBP", "RGBA"),
        ("jpeg", "image/jpeg", "JPEG", "RGB"),
        ("png", "image/png", "PNG", "RGBA"),
        ("gif", "image/gif", "GIF", "P"),
    ],
)
async def test_formats(fmt: str, mime: str, pil_format: str, mode: str, file_service: FileService) -> None:
    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    transparent.paste((0, 0, 255, 255), (0, 0, 20, 30))
    source = await stored(file_service, encode(transparent, "PNG"), name="pic.png")
    [out] = await prepare(file_service, [source], format=fmt, quality=90)
    image = await opened(file_service, out)
    assert (image.format, image.size) == (pil_format, (40, 30))
    assert image.mode.startswith(mode[0]) if fmt == "gif" else image.mode == mode
    assert out["mime"] == mime
    assert out["name"] == "pic" + {"jpeg": ".jpg"}.get(fmt, f".{fmt}")
    if fmt == "jpeg":  # no alpha in JPEG: transparent areas become white
        r, g, b = image.convert("RGB").getpixel((35, 15))  # type: ignore[misc]
        assert min(r, g, b) > 240


async def test_originals_are_untouched(file_service: FileService) -> None:
    data = encode(halves(), "JPEG", quality=95)
    source = await stored(file_service, data, name="photo.jpg")
    outputs = await prepare(file_service, [source, source], format="png", width=20)
    assert len({out["fid"] for out in outputs} | {source["fid"]}) == 3
    assert await file_service.read_bytes(source["fid"]) == data
    assert await file_service.describe(source["fid"]) == source


async def test_values_in_other_forms_and_exif_orientation(file_service: FileService) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    data = encode(halves((40, 20)), "JPEG", exif=exif.tobytes())
    [out] = await prepare(file_service, ["data:image/jpeg;base64," + base64.b64encode(data).decode()], format="png")
    assert (await opened(file_service, out)).size == (20, 40)


async def test_animated_gif_keeps_its_first_frame(file_service: FileService) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE)]
    out_io = io.BytesIO()
    frames[0].save(out_io, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    source = await stored(file_service, out_io.getvalue(), name="anim.gif")
    [out] = await prepare(file_service, [source], format="png")
    assert (await opened(file_service, out)).convert("RGB").getpixel((8, 8)) == RED


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"crop": {"left": 150, "top": 0, "width": 100, "height": 10}}, "reaches outside"),
        ({"width": 60000, "height": 60000, "fit": "fill"}, "over the limit of 50,000,000"),
        ({"width": 1, "height": 40000, "fit": "outside"}, "over the limit"),
    ],
)
async def test_bad_requests_are_input_errors(config: dict[str, Any], message: str, file_service: FileService) -> None:
    source = await stored(file_service, encode(halves(), "PNG"))
    with pytest.raises(BlockInputError, match=message) as caught:
        await prepare(file_service, [source], **config)
    assert caught.value.retryable is False


async def test_fake_image_is_an_input_error(file_service: FileService) -> None:
    fake = await stored(file_service, b"just some text", name="cat.png")
    with pytest.raises(BlockInputError, match="not a GIF, PNG, JPEG or WebP image"):
        await prepare(file_service, [fake])
    with pytest.raises(BlockInputError, match="not a file id"):
        await prepare(file_service, [{"fid": "nope"}])


async def test_pixel_limit_of_the_context(file_service: FileService) -> None:
    source = await stored(file_service, encode(halves(), "PNG"))
    strict = FileService(
        file_service.db, file_service.blobs, None, LimitsSettings(max_image_pixels=10_000), user_id="u1"
    )
    with pytest.raises(BlockInputError, match="over the limit of 10,000"):
        await PrepareImage().run(context(strict), PrepareImage.Config(), {"images": [source]})


def test_config_is_checked_at_save_time() -> None:
    for bad in ({"format": "bmp"}, {"fit": "stretch"}, {"quality": 0}, {"background": "not a colour"}, {"x": 1}):
        with pytest.raises(ValueError):
            PrepareImage.Config(**bad)


async def test_image_info(file_service: FileService) -> None:
    png = await stored(file_service, encode(Image.new("RGBA", (30, 20)), "PNG"), name="a.png")
    jpeg = await stored(file_service, encode(Image.new("L", (10, 5)), "JPEG"), name="b.jpg")
    outputs = await ImageInfo().run(context(file_service), ImageInfo.Config(), {"images": [png, jpeg]})
    assert outputs["width"] == 30 and outputs["height"] == 20
    assert outputs["info"] == [
        {"fid": png["fid"], "width": 30, "height": 20, "format": "png", "mime": "image/png", "size": png["size"],
         "mode": "RGBA"},
        {"fid": jpeg["fid"], "width": 10, "height": 5, "format": "jpeg", "mime": "image/jpeg", "size": jpeg["size"],
         "mode": "L"},
    ]  # fmt: skip
    empty = await ImageInfo().run(context(file_service), ImageInfo.Config(), {"images": []})
    assert empty == {"info": [], "width": None, "height": None}
