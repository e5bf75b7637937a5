"""Which transfer syntax we accept in each presentation context a peer proposes.

pynetdicom accepts, in each proposed context, the first syntax of the *acceptor's* list that the
requestor proposed. With one fixed list (Implicit VR Little Endian first) every context proposing
several syntaxes got Implicit VR. So each association gets its own acceptor lists, ordered from
what its requestor proposed (pynetdicom's ``EVT_REQUESTED`` comes before the negotiation, and
``assoc.acceptor.supported_contexts`` is per association):

- as a storage SCP (and for every other service): the requestor's order, which is how the modality
  prefers to encode its objects, except that Implicit VR Little Endian goes after every explicit
  uncompressed syntax it proposed (never implicit when explicit is proposed);
- as the sender of a C-GET (the requestor takes the storage SCP role): explicit VR little endian
  first, then implicit, then the requestor's order. One context holds one syntax, and
  uncompressed little endian is the one every stored object can be sent in (as stored, or
  converted keeping its UIDs); a compressed object goes back as stored when the requestor proposes
  its syntax in a context of its own.
"""

from __future__ import annotations

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.presentation import PresentationContext

EXPLICIT_UNCOMPRESSED = (ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)


def storage_order(proposed: list[str]) -> list[str]:
    """The requestor's syntaxes in its order, Implicit VR after any explicit uncompressed one."""
    order = list(dict.fromkeys(str(ts) for ts in proposed))
    if ImplicitVRLittleEndian in order and any(ts in order for ts in EXPLICIT_UNCOMPRESSED):
        order.remove(ImplicitVRLittleEndian)
        last_explicit = max(order.index(ts) for ts in EXPLICIT_UNCOMPRESSED if ts in order)
        order.insert(last_explicit + 1, ImplicitVRLittleEndian)
    return order


def retrieve_order(proposed: list[str]) -> list[str]:
    """For contexts in which we send (C-GET): uncompressed little endian first, then the requestor's order."""
    order = list(dict.fromkeys(str(ts) for ts in proposed))
    first = [ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts in order]
    return first + [ts for ts in order if ts not in first]


def contexts_for(requested: list[PresentationContext], supported: list[PresentationContext],
                 roles: dict[str, tuple]) -> list[PresentationContext]:
    """*supported* (the AE's contexts) with each proposed abstract syntax's syntaxes reordered for this requestor.

    *roles* maps a SOP class to the requestor's proposed (SCU role, SCP role).
    """
    proposed: dict[str, list[str]] = {}
    for cx in requested:
        proposed.setdefault(str(cx.abstract_syntax), []).extend(str(ts) for ts in cx.transfer_syntax)
    out = []
    for cx in supported:
        wanted = proposed.get(str(cx.abstract_syntax))
        if not wanted:
            out.append(cx)
            continue
        we_send = roles.get(str(cx.abstract_syntax), (None, None))[1] is True and cx.scu_role is True
        order = retrieve_order(wanted) if we_send else storage_order(wanted)
        ours = {str(ts) for ts in cx.transfer_syntax}
        new = PresentationContext()
        new.abstract_syntax = cx.abstract_syntax
        new.transfer_syntax = [ts for ts in order if ts in ours] or list(cx.transfer_syntax)
        new.scu_role, new.scp_role = cx.scu_role, cx.scp_role
        out.append(new)
    return out


def handle_requested(event) -> None:
    """pynetdicom ``EVT_REQUESTED``: order this association's acceptor syntaxes (see the module docstring)."""
    assoc = event.assoc
    if assoc.is_rejected or assoc.is_aborted:
        return  # refused by an earlier handler (who may associate, limits): nothing to negotiate
    primitive = assoc.requestor.primitive
    roles = {str(uid): (item.scu_role, item.scp_role) for uid, item in assoc.requestor.role_selection.items()}
    assoc.acceptor.supported_contexts = contexts_for(
        list(primitive.presentation_context_definition_list), list(assoc.acceptor.supported_contexts), roles
    )
