"""A ``parameters`` key sent twice in a ``ModelInferRequest``.

Protobuf keeps the last entry of a map key it meets twice, as orjson keeps the last of a JSON
key. So a request whose wire bytes hold ``parameters {user_id: "alice"}`` and then
``parameters {user_id: "bob"}`` would be served and counted as bob's, while the client's
record or a proxy's log could read alice's. The HTTP routes refuse a key sent twice
(:func:`serve_ab.api.http_util.refuse_repeated`); this finds one in a gRPC request, whose
parsed message no longer shows it.

Protobuf itself reads the bytes a second time, as :data:`MapEntries`: a message with the same
field numbers that declares only the three ``parameters`` maps, each as a list of entries
holding their key alone. Every entry on the wire is kept there, and everything else (tensor
bytes, names, shapes) is copied aside as fields it does not know, by protobuf's C code. A key
is refused when it comes twice in one list, whichever entry the parsed map kept (protobuf also
leaves out of a map an entry that carries a field it does not know; such an entry counts too).

What it costs in Ray's gRPC proxy, where the parser runs, against ``FromString`` alone on this
machine: 2-2.5 µs for a digit's request, keyed or not. A request of big tensors pays for a
second copy of their bytes (for 8 MB, 0.6 ms into memory already in use, 7 ms into fresh
memory); a crafted one of millions of tensors or fields, two to three times its parse.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

_FIELD = descriptor_pb2.FieldDescriptorProto


def _map_entries_message() -> type[Message]:
    """ModelInferRequest's three ``parameters`` maps as lists of entries, at the field numbers
    of grpc_predict_v2.proto (a test checks them against it): the request's ``parameters`` (4),
    each input's (``inputs`` 5, its ``parameters`` 4) and each requested output's (``outputs``
    6, its ``parameters`` 2). An entry is its key (1); its value is not read."""
    file = descriptor_pb2.FileDescriptorProto(name="serve_ab_map_entries.proto", package="serve_ab_map_entries",
                                              syntax="proto3")

    def message(name: str, *fields: tuple[str, int, str | None]) -> None:
        declared = file.message_type.add(name=name)
        for field_name, number, entry_type in fields:
            if entry_type is None:
                declared.field.add(name=field_name, number=number, type=_FIELD.TYPE_STRING,
                                   label=_FIELD.LABEL_OPTIONAL)
            else:
                declared.field.add(name=field_name, number=number, type=_FIELD.TYPE_MESSAGE,
                                   label=_FIELD.LABEL_REPEATED, type_name=f".serve_ab_map_entries.{entry_type}")

    message("Entry", ("key", 1, None))
    message("Input", ("parameters", 4, "Entry"))
    message("Output", ("parameters", 2, "Entry"))
    message("Request", ("parameters", 4, "Entry"), ("inputs", 5, "Input"), ("outputs", 6, "Output"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("serve_ab_map_entries.Request"))


MapEntries = _map_entries_message()


def repeated_parameter(data: bytes) -> tuple[str, str] | None:
    """``(where, key)`` for the first key that one ``parameters`` map of the serialized
    ``ModelInferRequest`` ``data`` holds twice, e.g. ``("parameters", "user_id")`` or
    ``("inputs[1].parameters", "binary_data_size")``; None when every key is sent once.
    ``data``: bytes protobuf parsed as a ``ModelInferRequest``. :data:`MapEntries` declares
    nothing that message lacks, so it parses them too."""
    entries = MapEntries.FromString(data)
    if (key := _first_repeat(entries.parameters)) is not None:
        return "parameters", key
    if not _tensors_hold_entries(entries):  # most requests: no Python step per tensor
        return None
    for field, tensors in (("inputs", entries.inputs), ("outputs", entries.outputs)):
        for index, tensor in enumerate(tensors):
            if len(tensor.parameters) > 1 and (key := _first_repeat(tensor.parameters)) is not None:
                return f"{field}[{index}].parameters", key
    return None


def _tensors_hold_entries(entries: Any) -> bool:
    """Whether any input or output of ``entries`` has a map entry, asked of protobuf's C code:
    with the request's own entries and every unknown field dropped, a tensor without entries
    serializes to two bytes (its tag and a zero length), and one with any to more."""
    entries.ClearField("parameters")
    entries.DiscardUnknownFields()
    return entries.ByteSize() > 2 * (len(entries.inputs) + len(entries.outputs))


def _first_repeat(entries: Any) -> str | None:
    """The first key that comes a second time in a list of entries, in wire order."""
    seen: set[str] = set()
    for entry in entries:
        if entry.key in seen:
            return entry.key
        seen.add(entry.key)
    return None
