"""WADO-RS retrieval (studies, series, instances as multipart, metadata, bulk data, frames) and WADO-URI
(``/wado``); the stored file streamed with byte ranges. Rendered images and thumbnails: rendered.py."""

from __future__ import annotations

import io
import json
import secrets

from flask import Response, current_app, g, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from archive_core.api import BlobMissing, InvalidQuery, NotFound
from backoffice.dicomweb.access import (CHUNK, DICOM_JSON, UNCOMPRESSED, DicomwebError, base_url, dicomweb_route,
                                        json_error, wado_bp)
from backoffice.dicomweb.multipart import MultipartFile, answer_identity, multipart_segments
from backoffice.extensions import db, facade



def _accepted_syntax() -> str | None:
    """The transfer syntax the Accept header asks for: None (or ``*``) means as stored.

    Raises 406 when the header accepts neither ``multipart/related; type="application/dicom"`` nor a
    wildcard.
    """
    accept = request.headers.get("Accept", "").strip()
    if not accept or accept.startswith("*/*"):
        return None
    wanted: list[str | None] = []
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parts[1:])}
        kind = parts[0].lower()
        if kind in ("multipart/related", "multipart/*", "*/*") and params.get("type", "application/dicom") in (
                "application/dicom", "application/*", "*/*"):
            ts = params.get("transfer-syntax")
            wanted.append(None if ts in (None, "*") else ts)
    if not wanted:
        raise DicomwebError(406, 'WADO-RS retrieval answers multipart/related; type="application/dicom"')
    return None if None in wanted else wanted[0]


def stored_instances(study: str, series: str | None = None, instance: str | None = None) -> list:
    try:
        return facade().stored_instances(db(), study, series, instance)
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    except NotFound:
        raise DicomwebError(404, "no such study, series or instance") from None


def _multipart(found: list, target_ts: str | None):
    """The instances as one multipart/related body, streamed by a generator: one file open at a time,
    read in chunks, converted ones whole. For an object store or a conversion; no Range."""
    archive = facade()
    boundary = secrets.token_hex(16)

    def parts():
        for stored in found:
            ts = target_ts or stored.transfer_syntax_uid
            yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\n\r\n").encode()
            if ts == stored.transfer_syntax_uid:
                with archive.open_stored(stored) as f:
                    while chunk := f.read(CHUNK):
                        yield chunk
            else:
                yield archive.converted_instance(stored, ts)
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return Response(parts(), content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def _multipart_file(found: list, sizes: list[int]) -> Response:
    """The instances' stored files as one multipart/related file (multipart.py): an exact
    Content-Length, byte ranges, an ETag, sent by the server's own loop."""
    secret = current_app.secret_key
    identity = answer_identity(secret.encode() if isinstance(secret, str) else secret, found, sizes)
    boundary = identity[:32]
    body = MultipartFile(multipart_segments(found, sizes, boundary), facade().open_stored)
    response = Response(wrap_file(request.environ, body, CHUNK), direct_passthrough=True,
                        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')
    response.content_length = body.length
    response.set_etag(identity)
    return byte_ranges(response, body.length)


def _retrieve(study: str, series: str | None = None, instance: str | None = None):
    target = _accepted_syntax()
    found = stored_instances(study, series, instance)
    if target is not None and target not in UNCOMPRESSED and any(s.transfer_syntax_uid != target for s in found):
        raise DicomwebError(406, f"cannot convert to {target}: stored syntax, explicit or implicit VR little endian")
    sizes = None
    if target is None or all(s.transfer_syntax_uid == target for s in found):
        try:  # a missing file is known before the first byte is sent
            sizes = facade().local_file_sizes(found)
        except BlobMissing as exc:
            raise DicomwebError(404, f"the {exc}") from None
    if sizes is None:  # an object store, or a conversion
        for stored in found:
            try:
                facade().open_stored(stored).close()
            except BlobMissing:
                raise DicomwebError(404, f"the file of {stored.sop_instance_uid} is missing") from None
    g.dicomweb_detail.update(instances=len(found), transfer_syntax=target or "stored")
    return _multipart(found, target) if sizes is None else _multipart_file(found, sizes)


@dicomweb_route("/studies/<study>", "dicomweb.retrieve", methods=["GET"])
def retrieve_study(study: str):
    return _retrieve(study)


@dicomweb_route("/studies/<study>/series/<series>", "dicomweb.retrieve", methods=["GET"])
def retrieve_series(study: str, series: str):
    return _retrieve(study, series)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>", "dicomweb.retrieve", methods=["GET"])
def retrieve_instance(study: str, series: str, instance: str):
    return _retrieve(study, series, instance)


def _metadata(study: str, series: str | None = None, instance: str | None = None):
    found = stored_instances(study, series, instance)
    base = base_url()
    try:
        answers = facade().instance_metadata(found, base_url=base)
    except BlobMissing as exc:
        raise DicomwebError(404, str(exc)) from None
    g.dicomweb_detail.update(instances=len(found))
    return Response(json.dumps(answers), mimetype=DICOM_JSON)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/bulkdata/<tag>", "dicomweb.retrieve",
                methods=["GET"])
def instance_bulkdata(study: str, series: str, instance: str, tag: str):
    """A bulk data value the metadata points to (BulkDataURI), as one application/octet-stream part."""
    found = stored_instances(study, series, instance)
    try:
        value = facade().bulk_value(found[0], tag)
    except (InvalidQuery, KeyError):
        raise DicomwebError(404, f"no bulk data {tag[:16]!r} in this instance") from None
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + value + (
        f"\r\n--{boundary}--\r\n").encode()
    g.dicomweb_detail.update(instances=1, tag=tag[:16])
    return Response(body, content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


def _frame_syntaxes() -> frozenset[str]:
    """The transfer syntaxes frames may go out in, from Accept: ``*`` (any: as stored) when there is no
    Accept, a wildcard, ``transfer-syntax=*`` or a type other than application/octet-stream;
    application/octet-stream without a transfer-syntax is explicit VR little endian (PS3.18 8.7.3.5)."""
    accept = request.headers.get("Accept", "").strip()
    if not accept:
        return frozenset({"*"})
    syntaxes = set()
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parts[1:])}
        kind = params.get("type", parts[0]).lower() if parts[0].lower().startswith("multipart/") else parts[0].lower()
        if kind != "application/octet-stream":
            syntaxes.add("*")
        else:
            syntaxes.add(params.get("transfer-syntax", "1.2.840.10008.1.2.1"))
    return frozenset(syntaxes)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/frames/<frame_list>", "dicomweb.retrieve",
                methods=["GET"])
def instance_frames(study: str, series: str, instance: str, frame_list: str):
    """Frames as ``multipart/related; type="application/octet-stream"``, one part per frame."""
    found = stored_instances(study, series, instance)
    try:
        data, ts = facade().instance_frames(found[0], frame_list, syntaxes=_frame_syntaxes())
    except InvalidQuery as exc:
        raise DicomwebError(400, str(exc)) from None
    except KeyError:
        raise DicomwebError(404, "this instance has no pixel data") from None
    except IndexError as exc:
        raise DicomwebError(404, str(exc)) from None
    except BlobMissing as exc:
        raise DicomwebError(404, str(exc)) from None
    boundary = secrets.token_hex(16)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/octet-stream; transfer-syntax={ts}\r\n\r\n".encode()
        + frame + b"\r\n" for frame in data) + f"--{boundary}--\r\n".encode()
    g.dicomweb_detail.update(instances=1, frames=len(data))
    return Response(body, content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


@dicomweb_route("/studies/<study>/metadata", "dicomweb.metadata", methods=["GET"])
def study_metadata(study: str):
    return _metadata(study)


@dicomweb_route("/studies/<study>/series/<series>/metadata", "dicomweb.metadata", methods=["GET"])
def series_metadata(study: str, series: str):
    return _metadata(study, series)


@dicomweb_route("/studies/<study>/series/<series>/instances/<instance>/metadata", "dicomweb.metadata",
                methods=["GET"])
def instance_metadata(study: str, series: str, instance: str):
    return _metadata(study, series, instance)


def byte_ranges(response: Response, length: int) -> Response:
    """*response* answering a ``Range: bytes=...`` request (RFC 9110 14): 206 with that part, or 416.
    A Range in another unit is ignored (the whole object), as RFC 9110 14.2 requires."""
    if not request.headers.get("Range", "bytes=").strip().lower().startswith("bytes="):
        response.accept_ranges = "bytes"
        return response
    try:
        response.make_conditional(request.environ, accept_ranges=True, complete_length=length)
    except RequestedRangeNotSatisfiable:
        response.close()
        answer = json_error(416, "range_not_satisfiable", f"the object is {length} bytes long")
        answer.headers["Content-Range"] = f"bytes */{length}"
        return answer
    return response


def stored_file(stored) -> Response:
    """The stored file as application/dicom, streamed in chunks (memory stays flat whatever its size),
    with byte ranges for a viewer or a download that resumes."""
    f = facade().open_stored(stored)
    try:
        length = f.seek(0, io.SEEK_END)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    response = Response(wrap_file(request.environ, f, CHUNK), mimetype="application/dicom",
                        direct_passthrough=True)
    response.content_length = length
    return byte_ranges(response, length)


# -- WADO-URI ---------------------------------------------------------------------------------------


@dicomweb_route("/wado", "dicomweb.retrieve", blueprint=wado_bp, methods=["GET"])
def wado_uri():
    """``requestType=WADO&studyUID&seriesUID&objectUID``; ``contentType`` application/dicom (the stored
    file, or ``transferSyntax`` converted when uncompressed) or image/jpeg (default) / image/png with
    ``windowCenter``/``windowWidth``, ``rows``/``columns``, ``frameNumber``."""
    args = request.args
    if args.get("requestType") != "WADO":
        raise DicomwebError(400, "requestType must be WADO")
    missing = [k for k in ("studyUID", "seriesUID", "objectUID") if not args.get(k)]
    if missing:
        raise DicomwebError(400, f"missing {', '.join(missing)}")
    study, series, instance = args["studyUID"], args["seriesUID"], args["objectUID"]
    content_type = (args.get("contentType") or "image/jpeg").split(",")[0].strip().lower()
    found = stored_instances(study, series, instance)
    g.dicomweb_detail.update(instances=1, content_type=content_type)
    if content_type == "application/dicom":
        stored = found[0]
        target = args.get("transferSyntax") or stored.transfer_syntax_uid
        if target == stored.transfer_syntax_uid:
            return stored_file(stored)
        elif target in UNCOMPRESSED:
            data = facade().converted_instance(stored, target)
        else:
            raise DicomwebError(406, f"cannot convert to {target}: stored syntax, explicit or implicit VR "
                                     "little endian")
        response = Response(data, mimetype="application/dicom")
        return byte_ranges(response, len(data))
    if content_type not in ("image/jpeg", "image/png"):
        raise DicomwebError(406, f"contentType {content_type} is not served: application/dicom, image/jpeg, image/png")
    try:
        window = None
        if args.get("windowCenter") or args.get("windowWidth"):
            window = (float(args["windowCenter"]), float(args["windowWidth"]))
        viewport = max(int(args.get("rows") or 0), int(args.get("columns") or 0)) or None
        frame = int(args.get("frameNumber") or 1)
        image = facade().render_frame(db(), instance, frame, window=window, viewport=viewport, quality=90,
                                      fmt=content_type.split("/")[1])
    except (ValueError, KeyError, InvalidQuery) as exc:
        raise DicomwebError(400, f"bad rendering parameters: {exc}") from None
    return Response(image, mimetype=content_type)
