"""WADO-RS rendered resources: a frame as JPEG or PNG (window, viewport, quality) and the thumbnails of a
study, a series or an instance."""

from __future__ import annotations

from flask import Response, g, request

from archive_core.api import BlobMissing, InvalidQuery, NotFound
from backoffice.dicomweb.access import DicomwebError, dicomweb_route
from backoffice.dicomweb.wado import stored_instances
from backoffice.extensions import db, facade


def _render_options(default_viewport: int | None = None):
    """(fmt, window, viewport, quality) from Accept and ``window=center,width[,linear]``, ``viewport=w,h``,
    ``quality``; ValueError for a malformed one."""
    accept = request.headers.get("Accept", "")
    fmt = "png" if "image/png" in accept and "image/jpeg" not in accept else "jpeg"
    window = None
    if request.args.get("window"):
        parts = request.args["window"].split(",")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "linear"):
            raise ValueError("window is center,width[,linear]")
        window = (float(parts[0]), float(parts[1]))
    viewport = default_viewport
    if request.args.get("viewport"):
        parts = request.args["viewport"].split(",")
        if len(parts) < 2:
            raise ValueError("viewport is width,height")
        viewport = max(int(parts[0]), int(parts[1]))
        if viewport < 1:
            raise ValueError("viewport is at least 1 pixel")
    quality = int(request.args.get("quality", 90))
    if not 1 <= quality <= 100:
        raise ValueError("quality is 1 to 100")
    return fmt, window, viewport, quality


def _rendered(instance: str, frame: int = 1):
    """A frame as JPEG (default) or PNG; ``window=center,width[,linear]``, ``viewport=w,h``, ``quality``."""
    try:
        fmt, window, viewport, quality = _render_options()
        image = facade().render_frame(db(), instance, frame, window=window, viewport=viewport, quality=quality, fmt=fmt)
    except (ValueError, InvalidQuery) as exc:
        raise DicomwebError(400, str(exc)) from None
    except NotFound:
        raise DicomwebError(404, "no such instance") from None
    g.dicomweb_detail.update(instances=1, rendered=fmt)
    return Response(image, mimetype=f"image/{fmt}")


THUMBNAIL_SIZE = 128  # pixels on the longest side, unless ``viewport`` asks otherwise
_THUMBNAIL_TRIES = 10


def _thumbnail(found: list):
    """PS3.18 thumbnail: the first frame of a representative instance, small. Representative: the middle
    instance of the first series that renders (a CT stack shows its middle slice, not its edge); a series
    without image (an SR, a PDF) is passed over. 404 when nothing renders."""
    try:
        fmt, window, viewport, quality = _render_options(THUMBNAIL_SIZE)
    except ValueError as exc:
        raise DicomwebError(400, str(exc)) from None
    by_series: dict[str, list] = {}
    for stored in found:
        by_series.setdefault(stored.series_uid, []).append(stored)
    candidates = [members[len(members) // 2] for members in by_series.values()][:_THUMBNAIL_TRIES]
    for stored in candidates:
        try:
            image = facade().render_frame(db(), stored.sop_instance_uid, 1, window=window, viewport=viewport,
                                          quality=quality, fmt=fmt)
        except (InvalidQuery, NotFound, BlobMissing):
            continue
        g.dicomweb_detail.update(instances=1, thumbnail=stored.sop_instance_uid)
        return Response(image, mimetype=f"image/{fmt}")
    raise DicomwebError(404, "nothing here renders as an image")


@dicomweb_route("/studies/<study>/thumbnail", "dicomweb.retrieve", methods=["GET"])
def study_thumbnail(study: str):
    return _thumbnail(stored_instances(study))


@dicomweb_route("/studies/<study>/series/<series>/thumbnail", "dicomweb.retrieve", methods=["GET"])
def series_thumbnail(study: str, series: str):
    return _thumbnail(stored_instances(study, series))


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/thumbnail", "dicomweb.retrieve",
                methods=["GET"])
def instance_thumbnail(study: str, series: str, instance: str):
    return _thumbnail(stored_instances(study, series, instance))


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/rendered", "dicomweb.retrieve",
                methods=["GET"])
def instance_rendered(study: str, series: str, instance: str):
    stored_instances(study, series, instance)
    return _rendered(instance)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/frames/<int:frame>/rendered",
                "dicomweb.retrieve", methods=["GET"])
def frame_rendered(study: str, series: str, instance: str, frame: int):
    stored_instances(study, series, instance)
    return _rendered(instance, frame)
