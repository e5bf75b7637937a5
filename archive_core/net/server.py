"""The DICOM SCP: which services and contexts we accept, and starting and stopping the server."""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass

from pydicom import config as pydicom_config
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from archive_core.archive import Archive
from archive_core.net import chunked, commitment, encoding, handlers, limits, qr, syntaxes, tls, tuning, worklist
from archive_core.net.handlers import ArchiveContext
from archive_core.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)


QR_SOP_CLASSES = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    return list(_STORAGE_CLASSES.values())


def build_ae(archive: Archive) -> AE:
    settings = archive.settings
    ae = AE(ae_title=settings.DICOM_AE_TITLE)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_pdu_size = settings.DICOM_MAX_PDU
    # pynetdicom's count includes connections that have not asked yet (silent ones): our own
    # limits (archive_core/net/limits.py) count associations that asked, so its count is kept out of the way.
    ae.maximum_associations = 1_000_000
    ae.acse_timeout = settings.DICOM_ACSE_TIMEOUT
    ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT
    ae.dimse_timeout = settings.DICOM_NETWORK_TIMEOUT
    ae.require_called_aet = False
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for uid in storage_sop_classes():
        # Role selection accepted as proposed: a C-GET requestor acts as the storage SCP.
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    for uid in QR_SOP_CLASSES:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(commitment.STORAGE_COMMITMENT_PUSH)  # N-ACTION in, N-EVENT-REPORT back
    # The day's scheduled procedure steps (C-FIND) and what the modality performed (N-CREATE/N-SET).
    ae.add_supported_context(worklist.MODALITY_WORKLIST_FIND, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(worklist.MODALITY_PERFORMED_PROCEDURE_STEP, ALL_TRANSFER_SYNTAXES)
    return ae


class InheritedSocketServer(ThreadedAssociationServer):
    """Accepts on a listening socket bound by the parent process: SCP worker processes share one port.

    Every worker polls the same socket; the one that accepts first serves the association, the
    others find nothing to accept (the socket does not block) and go back to waiting.
    """

    def __init__(self, *args, listening: socket.socket, **kwargs) -> None:
        self._listening = listening
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self._listening
        self.socket.settimeout(0)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # the parent listens already

    def server_close(self) -> None:
        # Not shutdown(): that would stop the listening for the other workers too.
        self.socket.close()


@dataclass
class Inherited:
    """What an SCP worker process gets from its parent (archive_core/net/workers.py)."""

    socket: socket.socket
    tls_socket: socket.socket | None
    admission: limits.AssociationLimits  # counts the associations of every worker


def _serve(ae: AE, address, bound, *, ssl_context=None, listening: socket.socket | None = None):
    if listening is None:
        return ae.start_server(address, block=False, evt_handlers=bound, ssl_context=ssl_context)
    # As AE.start_server(block=False) does, with the inherited socket.
    server = ae.make_server(address, evt_handlers=bound, ssl_context=ssl_context,
                            server_class=InheritedSocketServer, listening=listening)
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)
    return server


@dataclass
class RunningServer:
    ae: AE
    server: ThreadedAssociationServer
    context: ArchiveContext
    previous_validation_mode: int = 1
    # The DICOM TLS port's server (DICOM_TLS_PORT), same AE and handlers.
    tls_server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def tls_port(self) -> int | None:
        return self.tls_server.server_address[1] if self.tls_server else None

    def stop(self) -> None:
        if self.tls_server is not None:
            self.tls_server.shutdown()
        self.server.shutdown()
        self.ae.shutdown()
        self.context.close()  # after the associations: their last audit events are written
        pydicom_config.settings.reading_validation_mode = self.previous_validation_mode


def start_server(archive: Archive, *, host: str | None = None, port: int | None = None,
                 inherited: Inherited | None = None) -> RunningServer:
    """Replay the journal, start the indexer and listen; returns at once (the server runs in threads).

    With DICOM_TLS_PORT set, a second port speaks DICOM TLS (same AE, same services and rules).
    *inherited*: an SCP worker process, serving on its parent's sockets (the archive's ingestor
    then hands what it receives to the parent's indexer).
    """
    settings = archive.settings
    # Before anything starts: TLS settings that cannot work stop the server with a clear message.
    ssl_context = tls.server_context(settings) if settings.DICOM_TLS_PORT else None
    # Library-wide switch, set once when a server starts: accept private/unknown SOP classes as storage.
    _config.UNRESTRICTED_STORAGE_SERVICE = settings.DICOM_ACCEPT_UNKNOWN_SOP_CLASSES
    # Query identifiers carry patient names: pynetdicom must not write them to the log.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom logs every DIMSE message at INFO (one line per C-FIND answer, per C-STORE), which
    # costs as much as building the answer; our handlers log what matters. A level set by the
    # deployment is kept.
    # ... nor format every PDU and DIMSE message for its debug log (standard notification handlers).
    _config.LOG_HANDLER_LEVEL = "none"
    # Incoming datasets go to a temporary file of the journal's folder as their fragments arrive
    # (memory stays flat whatever the object's size), on our accepted associations only; the
    # ingestor renames that file into the journal.
    chunked.install()
    pynetdicom_log = logging.getLogger("pynetdicom")
    if pynetdicom_log.level == logging.NOTSET:
        pynetdicom_log.setLevel(logging.WARNING)
    tuning.install()
    encoding.install()  # an optimisation only: flat datasets encoded faster, same bytes
    # Values are stored as received and checked where it matters (the identifying UIDs); pydicom's
    # per-element regular expressions would run on every element of every message. Restored on stop.
    previous_validation_mode = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    archive.ingestor.start()
    ctx = ArchiveContext(
        settings=settings,
        ingestor=archive.ingestor,
        sessions=archive.sessions,
        open_blob=lambda inst: archive.store_for(inst.tier).open(inst.storage_key),
    )
    ae = build_ae(archive)
    admission = inherited.admission if inherited is not None else limits.AssociationLimits(
        total=settings.DICOM_MAX_ASSOCIATIONS, per_address=settings.DICOM_MAX_ASSOCIATIONS_PER_ADDRESS
    )
    # An operation's end counts as activity for the idle timeout (see limits.keeping_alive).
    alive = limits.keeping_alive
    bound = [
        (evt.EVT_CONN_OPEN, handlers.handle_conn_open, [ctx]),
        (evt.EVT_CONN_OPEN, chunked.on_conn_open, [archive.store.incoming_dir, settings.DICOM_MAX_OBJECT_BYTES]),
        # Who may associate first (a refusal there is final), then how many may at once.
        (evt.EVT_REQUESTED, handlers.handle_requested, [ctx]),
        (evt.EVT_REQUESTED, admission.on_requested),
        # Transfer syntaxes accepted in the requestor's order, never implicit over explicit
        # (ALL_TRANSFER_SYNTAXES starts with Implicit VR): archive_core/net/syntaxes.py.
        (evt.EVT_REQUESTED, syntaxes.handle_requested),
        (evt.EVT_C_ECHO, handlers.handle_echo, [ctx]),
        (evt.EVT_C_STORE, alive(handlers.handle_store), [ctx]),
        (evt.EVT_C_FIND, alive(qr.handle_find), [ctx]),
        (evt.EVT_C_MOVE, alive(qr.handle_move), [ctx]),
        (evt.EVT_C_GET, alive(qr.handle_get), [ctx]),
        (evt.EVT_N_ACTION, commitment.handle_n_action, [ctx]),
        (evt.EVT_N_CREATE, alive(worklist.handle_n_create), [ctx]),
        (evt.EVT_N_SET, alive(worklist.handle_n_set), [ctx]),
        (evt.EVT_ACSE_SENT, handlers.handle_acse_sent, [ctx]),
        (evt.EVT_CONN_CLOSE, handlers.handle_closed, [ctx]),
        (evt.EVT_CONN_CLOSE, chunked.on_conn_close),
    ]
    if inherited is not None:
        bound.append((evt.EVT_CONN_CLOSE, inherited.admission.on_closed))
    address = (host if host is not None else settings.DICOM_HOST, settings.DICOM_PORT if port is None else port)
    server = _serve(ae, address, bound, listening=inherited.socket if inherited else None)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.contexts = tuning.SupportedContexts(server.contexts)
    log.info("DICOM SCP %s listening on %s:%d", settings.DICOM_AE_TITLE, address[0], server.server_address[1])
    tls_server = None
    if ssl_context is not None:
        try:
            tls_server = _serve(ae, (address[0], settings.DICOM_TLS_PORT), bound, ssl_context=ssl_context,
                                listening=inherited.tls_socket if inherited else None)
        except Exception:
            server.shutdown()
            raise
        tls_server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("DICOM TLS on %s:%d (client certificate %s)", address[0], tls_server.server_address[1],
                 "required" if settings.DICOM_TLS_REQUIRE_CLIENT_CERT else "optional")
    return RunningServer(ae=ae, server=server, context=ctx, previous_validation_mode=previous_validation_mode,
                         tls_server=tls_server)
