"""Image uploads read by our own code: multipart form fields or the raw request body.

No value of a request is ever fetched as a URL: a text value where a file belongs is refused.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from serving.errors import ApiError

# Raw bodies of these types are read as one image; Pillow decides what the bytes really are.
RAW_TYPES = ("image/", "application/octet-stream")
# Text fields of a form are small; images belong in file parts.
MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_TEXT_FIELDS = 32


async def uploads(request: Request, *, field: str, max_count: int) -> list[bytes]:
    """The bytes of each image in the form's file field `field` (at most `max_count`), or of the
    raw body when `max_count` is 1 and the body is an image."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return await _form_files(request, field=field, max_count=max_count)
    if max_count == 1 and content_type.startswith(RAW_TYPES):
        return [await request.body()]
    raise _unsupported(request, content_type, field=field, raw=max_count == 1)


async def _form_files(request: Request, *, field: str, max_count: int) -> list[bytes]:
    parser = MultiPartParser(
        request.headers,
        request.stream(),
        # One file more than allowed still parses, so the refusal can say how many came.
        max_files=max_count + 1,
        max_fields=MAX_TEXT_FIELDS,
        max_part_size=MAX_TEXT_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ApiError(_form_problem(error.message, field=field, max_count=max_count)) from None
    try:
        values = form.getlist(field)
        _check_fields(values, field=field, max_count=max_count, names=list(form.keys()))
        return [await value.read() for value in values]
    finally:
        await form.close()


def _check_fields(values: list, *, field: str, max_count: int, names: list[str]) -> None:
    example = f"curl -F {field}=@photo.png"
    if not values:
        got = f" (it has {', '.join(repr(name) for name in names)})" if names else ""
        raise ApiError(
            f"the form has no field {field!r}{got}; send the image file as the multipart field"
            f" {field!r} ({example})"
        )
    for value in values:
        if not isinstance(value, UploadFile):
            raise ApiError(
                f"{field!r} holds text ({len(value)} characters), not a file; send the image"
                f" file itself as a file part ({example}). The service never downloads URLs"
            )
    if len(values) > max_count:
        if max_count == 1:
            raise ApiError(
                f"the form has {len(values)} {field!r} files; /predict_image classifies one"
                " image: send several to /predict_images as repeated `images` fields"
            )
        raise ApiError(
            f"{field}: {len(values)} images is over the limit of {max_count} per request"
            " (MAX_IMAGES); split them over several requests"
        )


def _form_problem(message: str, *, field: str, max_count: int) -> str:
    """Starlette's parser message, said in terms of what the client should send."""
    if message.startswith("Too many files"):
        return (
            f"{field}: more than {max_count} images is over the limit of {max_count} per"
            " request (MAX_IMAGES); split them over several requests"
        )
    if message.startswith(("Part exceeded", "Field exceeded")):
        return (
            f"a text field of the form is over {MAX_TEXT_FIELD_BYTES // 1024} KB; images go in"
            f" file parts (with a filename), e.g. curl -F {field}=@photo.png"
        )
    return (
        f"the multipart body cannot be read ({message}); let your HTTP client build the form,"
        f" e.g. curl -F {field}=@photo.png"
    )


def _unsupported(request: Request, content_type: str, *, field: str, raw: bool) -> ApiError:
    path = request.url.path
    ways = f"as the multipart file field {field!r} (curl -F {field}=@photo.png)"
    if raw:
        ways += " or as the raw body with Content-Type: image/png, image/jpeg, ..."
    if not content_type:
        if request.headers.get("content-length", "0") in ("", "0") and (
            "transfer-encoding" not in request.headers
        ):
            return ApiError(f"the request has no body; send the image {ways}")
        return ApiError(f"the request has no Content-Type; send the image {ways}", 415)
    hint = ""
    if content_type.startswith("application/json"):
        hint = "; JSON pixel arrays go to /predict or the OIP endpoint /v2/models/<name>/infer"
    return ApiError(f"{path} does not read {content_type}; send the image {ways}{hint}", 415)
