"""Image blocks: `prepare_image` (convert, resize, crop into new files) and `image_info` (size, format, mode).

Pillow's decoding and encoding are CPU-bound, so they run in a worker thread. Every image is checked by its
content and bounded in pixels (`limits.max_image_pixels`) through `ctx.files.resolve_media` before any
decoder sees it, and an output is refused before it is made when it would be over the same bound.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image, ImageColor, ImageOps
from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.blocks.base import BlockConfig, BlockContext, BlockInputError, FileRef, Port, Ports, PortType
from conveyor.errors import NotFoundError, PayloadTooLargeError, ValidationError

FORMATS = ("GIF", "PNG", "JPEG", "WEBP")
MIMES = {"GIF": "image/gif", "PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
EXTENSIONS = {"GIF": ".gif", "PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
_MAX_SIDE = 65_535  # the largest side any of the four formats can hold (WebP: 16383, checked by Pillow)

ImageSource = Path | bytes


async def _resolve(ctx: BlockContext, value: Any) -> FileRef:
    """The stored, checked image behind an input value; a bad one is the block's input error."""
    try:
        return await ctx.files.resolve_media(value, kind="image")
    except (ValidationError, NotFoundError, PayloadTooLargeError) as exc:
        raise BlockInputError(exc.message) from exc


async def _source(ctx: BlockContext, ref: FileRef) -> ImageSource:
    """A local path to the image when the store has one (Pillow then reads only what it needs), else bytes."""
    path = ctx.files.local_path(ref["fid"])
    if path is not None:
        return path
    return await ctx.files.read_bytes(ref["fid"], max_bytes=int(ctx.limits.max_upload_bytes))


def _open(source: ImageSource) -> Image.Image:
    """Opens a checked image lazily; Pillow's own bomb guard is caught so it never surfaces as a crash."""
    try:
        return Image.open(source if isinstance(source, Path) else io.BytesIO(source), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BlockInputError(f"image is too large to decode: {exc}") from None
    except Exception as exc:  # the store checked the header; anything else is a damaged file
        raise BlockInputError(f"image cannot be read: {type(exc).__name__}") from None


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


# ---------------------------------------------------------------------------------------------- prepare_image


class CropBox(BaseModel):
    """A region in source pixels, taken before resizing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    left: int = Field(default=0, ge=0, le=_MAX_SIDE)
    top: int = Field(default=0, ge=0, le=_MAX_SIDE)
    width: int = Field(ge=1, le=_MAX_SIDE)
    height: int = Field(ge=1, le=_MAX_SIDE)


Fit = Literal["contain", "cover", "fill", "inside", "outside"]


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _resized_size(size: tuple[int, int], width: int | None, height: int | None, fit: Fit) -> tuple[int, int]:
    """The size the source is scaled to (before `cover` crops or `contain` pads to the box)."""
    src_w, src_h = size
    if width is None:
        return size if height is None else _scaled(size, height / src_h)
    if height is None:
        return _scaled(size, width / src_w)
    if fit == "fill":
        return width, height
    scales = (width / src_w, height / src_h)
    if fit in ("contain", "inside"):
        return _scaled(size, min(scales))
    return _scaled(size, max(scales))  # cover, outside


def _check_result(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels or max(width, height) > _MAX_SIDE:
        raise BlockInputError(
            f"the result would be {width}×{height} = {width * height:,} pixels, "  # noqa: RUF001
            f"over the limit of {max_pixels:,} (or a side over {_MAX_SIDE})"
        )


def _transform(image: Image.Image, config: PrepareImage.Config, max_pixels: int) -> Image.Image:
    """Crops, resizes and fits one frame as configured (sharp's semantics for `fit`).

    The result's size is checked against `max_pixels` before any new canvas is made.
    """
    if config.crop is not None:
        box = config.crop
        right, bottom = box.left + box.width, box.top + box.height
        if right > image.width or bottom > image.height:
            raise BlockInputError(
                f"crop box {box.left},{box.top} {box.width}×{box.height} reaches outside "  # noqa: RUF001
                f"the {image.width}×{image.height} image"  # noqa: RUF001
            )
        image = image.crop((box.left, box.top, right, bottom))
    width, height = config.width, config.height
    resized = _resized_size(image.size, width, height, config.fit)
    _check_result(resized, max_pixels)
    if width is not None and height is not None:
        _check_result((width, height), max_pixels)
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.LANCZOS)
    if width is None or height is None or config.fit in ("fill", "inside", "outside"):
        return image
    if config.fit == "cover":  # centre-crop the overflow
        left, top = (image.width - width) // 2, (image.height - height) // 2
        return image.crop((left, top, left + width, top + height))
    # contain: letterbox onto the background
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA")
    canvas = Image.new("RGBA", (width, height), config.background_rgba())
    canvas.paste(image, ((width - image.width) // 2, (height - image.height) // 2), image.convert("RGBA"))
    return canvas


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _for_format(image: Image.Image, fmt: str) -> Image.Image:
    """The image in a mode `fmt` can store; JPEG has no alpha, so transparent areas become white."""
    if fmt == "JPEG":
        if _has_alpha(image):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return image if image.mode in ("L", "RGB", "CMYK") else image.convert("RGB")
    if fmt == "WEBP":
        wanted = "RGBA" if _has_alpha(image) else "RGB"
        return image if image.mode == wanted else image.convert(wanted)
    if fmt == "PNG" and image.mode not in _PNG_MODES:
        return image.convert("RGBA" if _has_alpha(image) else "RGB")
    return image  # GIF: Pillow quantizes to a palette itself


def _prepare(source: ImageSource, config: PrepareImage.Config, max_pixels: int) -> tuple[bytes, str, tuple[int, int]]:
    """Decodes, transforms and encodes one image (first frame); blocking, run it in a thread."""
    with _open(source) as opened:
        src_format = opened.format if opened.format in FORMATS else "JPEG"  # a multi-picture JPEG says MPO
        if opened.width * opened.height > max_pixels:
            raise BlockInputError(f"image is over the limit of {max_pixels:,} pixels")
        image = ImageOps.exif_transpose(opened)  # upright, as viewers show it; a copy, the source stays
    src_mode = image.mode
    icc = image.info.get("icc_profile")
    if image.mode in ("1", "P", "PA"):  # resampling a palette would fall back to nearest-neighbour
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    image = _transform(image, config, max_pixels)
    fmt = src_format if config.format == "keep" else config.format.upper()
    image = _for_format(image, fmt)
    out = io.BytesIO()
    options: dict[str, Any] = {"quality": config.quality} if fmt in ("JPEG", "WEBP") else {}
    if icc and fmt != "GIF" and image.mode == src_mode:  # a profile only describes the mode it was made for
        options["icc_profile"] = icc
    try:
        image.save(out, format=fmt, **options)
    except (OSError, ValueError) as exc:
        raise BlockInputError(f"cannot write the image as {fmt}: {exc}") from None
    return out.getvalue(), fmt, image.size


def _output_name(name: str, fmt: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return (stem or "image") + EXTENSIONS[fmt]


class PrepareImage:
    """Converts, resizes and crops images into new files; the originals are never changed.

    Config: `format` (webp, png, jpeg, gif or keep, default keep), `width` and `height` in pixels (either, both
    or neither), `fit` for when both are given (sharp's meanings: `cover` fills the box and crops the overflow
    from the centre, the default; `contain` fits inside and pads with `background`; `fill` stretches; `inside`
    fits inside without padding; `outside` covers the box without cropping), `crop` an optional
    `{left, top, width, height}` region taken before resizing, `quality` 1-100 for JPEG and WebP (default 80),
    `background` a CSS colour for `contain` padding (default opaque black). Images are turned upright by their
    EXIF orientation; animated images keep their first frame; JPEG output turns transparent areas white.
    Input `images` (a list); output `images`, one new file for each.
    """

    name: ClassVar[str] = "prepare_image"

    class Config(BlockConfig):
        format: Literal["webp", "png", "jpeg", "gif", "keep"] = "keep"
        width: int | None = Field(default=None, ge=1, le=_MAX_SIDE)
        height: int | None = Field(default=None, ge=1, le=_MAX_SIDE)
        fit: Fit = "cover"
        crop: CropBox | None = None
        quality: int = Field(default=80, ge=1, le=100)
        background: str = Field(default="#000000", max_length=64)

        @field_validator("background")
        @classmethod
        def _colour(cls, value: str) -> str:
            ImageColor.getrgb(value)  # raises ValueError, reported at save time
            return value

        def background_rgba(self) -> tuple[int, int, int, int]:
            rgb = ImageColor.getrgb(self.background)
            return (rgb[0], rgb[1], rgb[2], rgb[3] if len(rgb) == 4 else 255)

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return (
            {"images": Port(PortType.IMAGE, many=True, required=True, description="The images to prepare.")},
            {"images": Port(PortType.IMAGE, many=True, description="New files, one for each input image.")},
        )

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        max_pixels = int(ctx.limits.max_image_pixels)
        results: list[FileRef] = []
        for value in _items(inputs.get("images")):
            ref = await _resolve(ctx, value)
            source = await _source(ctx, ref)
            data, fmt, _ = await asyncio.to_thread(_prepare, source, config, max_pixels)
            results.append(await ctx.files.save_bytes(data, name=_output_name(ref["name"], fmt), mime=MIMES[fmt]))
        return {"images": results}


# ---------------------------------------------------------------------------------------------- image_info


def _info(source: ImageSource) -> tuple[int, int, str, str]:
    with _open(source) as image:
        return image.width, image.height, image.format or "", image.mode


class ImageInfo:
    """Reads images' size, format and colour mode from their headers (nothing is decoded). No configuration.

    Input `images` (a list). Outputs `info`, a list of `{fid, width, height, format, mime, size, mode}` (format
    in lower case: gif, png, jpeg, webp; size in bytes), and `width` and `height` of the first image (null when
    there is none).
    """

    name: ClassVar[str] = "image_info"

    class Config(BlockConfig):
        pass

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return (
            {"images": Port(PortType.IMAGE, many=True, required=True, description="The images to inspect.")},
            {
                "info": Port(PortType.JSON, description="One entry per image."),
                "width": Port(PortType.NUMBER, description="Width of the first image in pixels."),
                "height": Port(PortType.NUMBER, description="Height of the first image in pixels."),
            },
        )

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        info: list[dict[str, Any]] = []
        for value in _items(inputs.get("images")):
            ref = await _resolve(ctx, value)
            width, height, fmt, mode = await asyncio.to_thread(_info, await _source(ctx, ref))
            info.append(
                {
                    "fid": ref["fid"],
                    "width": width,
                    "height": height,
                    "format": fmt.lower(),
                    "mime": ref["mime"],
                    "size": ref["size"],
                    "mode": mode,
                }
            )
        first = info[0] if info else {}
        return {"info": info, "width": first.get("width"), "height": first.get("height")}
