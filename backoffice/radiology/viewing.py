"""The viewer pages and their image endpoints (also served to a share link's session, backoffice/radiology/sharing.py)."""

from __future__ import annotations

from flask import Response, abort, jsonify, render_template, request, url_for

from archive_core.api import PRESETS, RenderError, RenderParams
from backoffice.auth import roles_required
from backoffice.extensions import db, facade
from backoffice.radiology.web import READERS, audit_view, bp, study_detail

MULTIFRAME_SCAN_LIMIT = 10  # series this small are checked for multi-frame objects (cine, enhanced CT/MR)


def render_params_from(args) -> RenderParams:
    """Window/level, preset, frame, size and format from query parameters (400 when invalid)."""
    try:
        return RenderParams(
            frame=args.get("frame", 0, type=int),
            window_center=args.get("wc", type=float),
            window_width=args.get("ww", type=float),
            preset=args.get("preset") or None,
            size=args.get("size", 512, type=int),
            fmt=args.get("fmt", "png"),
        )
    except RenderError as exc:  # a bad parameter, not an image that cannot be shown (422)
        abort(400, str(exc))


def viewer_items(refs) -> list[dict]:
    """What the viewer scrolls through: each image, and each frame of a multi-frame object."""
    images = [r for r in refs if r.is_image]
    items = []
    for r in images:
        frames = facade().number_of_frames(r.sop_instance_uid) if len(images) <= MULTIFRAME_SCAN_LIMIT else 1
        items += [{"sop_instance_uid": r.sop_instance_uid, "instance_number": r.instance_number, "frame": n}
                  for n in range(frames)]
    return items


def image_response(sop_instance_uid: str, params: RenderParams) -> Response:
    """The rendered image (an unknown object is 404, one that cannot be shown 422: the app's handler).
    Patient data on shared desk PCs: never kept (the edge sets Cache-Control: no-store on every response)."""
    return Response(facade().render_instance(db(), sop_instance_uid, params), mimetype=params.content_type)


def viewer_page(detail, prior, *, key_image_url: str | None, shared: bool) -> Response:
    """The Cornerstone3D viewer (backoffice/static/vendor/viewer, built from viewer/): it reads the images
    through /dicom-web with this browser's session (a share link's session reads its one study only).
    Its page alone may start web workers and compile WebAssembly (the codecs)."""
    from backoffice.security import content_security_policy, csp_nonce

    response = Response(render_template("radiology/viewer.html", detail=detail, prior=prior, presets=PRESETS,
                                        dicomweb_url=url_for("dicomweb.search_studies").rsplit("/", 1)[0],
                                        key_image_url=key_image_url, shared=shared), mimetype="text/html")
    response.headers["Content-Security-Policy"] = content_security_policy(csp_nonce(), viewer=True)
    return response


@bp.route("/studies/<study_uid>/viewer")
@roles_required(*READERS)
def viewer(study_uid: str):
    detail = study_detail(study_uid)
    prior = None
    compare = request.args.get("compare")
    if compare:
        if compare not in {p.study_uid for p in facade().prior_studies(db(), study_uid)}:
            abort(404)
        prior = facade().study_detail(db(), compare)
    audit_view("study.view", detail, viewer=True, compare=compare)
    return viewer_page(detail, prior, key_image_url=url_for(".add_key_image", study_uid=study_uid), shared=False)


@bp.route("/series/<series_uid>/instances.json")
@roles_required(*READERS)
def series_instances(series_uid: str):
    return jsonify({"items": viewer_items(facade().series_instances(db(), series_uid))})


@bp.route("/instances/<sop_instance_uid>/image")
@roles_required(*READERS)
def image(sop_instance_uid: str):
    return image_response(sop_instance_uid, render_params_from(request.args))
