"""A ``parameters`` key sent twice in a ``ModelInferRequest``.

Protobuf keeps the last entry of a map key it meets twice, as orjson keeps the last of a JSON
key. So a request whose wire bytes hold ``parameters {user_id: "alice"}`` and then
``parameters {user_id: "bob"}`` would be served and counted as bob's, while the client's
record or a proxy's log could read alice's. The HTTP routes refuse a key sent twice
(:func:`serve_ab.api.http_util.refuse_repeated`); this finds one in a gRPC request, whose
parsed message no longer shows it.

Protobuf itself reads the bytes a second time, as :data:`MapEntries`: a message with the same
field numbers that declares only the three ``parameters`` maps, each as a list of entries
holding their key alone. Every entry on the wire is kept there, and protobuf's parser steps
over everything else (tensor bytes, names, shapes) as fields it does not know. A list longer
than its parsed map lost an entry to a repeated key. (protobuf also leaves out of a map an
entry that carries a field of its own it does not know; a list can be longer for that alone,
so the keys are compared before a request is refused.)

It runs only for a request with a parameter somewhere (:func:`has_parameters`): a repeat
leaves its key in the parsed map. In Ray's gRPC proxy, where the parser runs, that adds 1.4 µs
to a digit's request without parameters and 3.8 µs to one keyed by ``parameters``, against
``FromString`` alone on this machine. A bigger request also pays for a second copy of the bytes
the second parse steps over (the parse of 8 MB of raw tensor bytes takes 0.6 ms) and for a
Python step per tensor, well under a microsecond each.
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


def has_parameters(request: Any) -> bool:
    """Whether a parsed ``ModelInferRequest`` holds a parameter in any of its maps."""
    if request.parameters:
        return True
    for tensor in request.inputs:  # loops, not any(): no generator on every request's path
        if tensor.parameters:
            return True
    for tensor in request.outputs:
        if tensor.parameters:
            return True
    return False


def repeated_parameter(data: bytes, request: Any) -> tuple[str, str] | None:
    """``(where, key)`` for the first key that one ``parameters`` map of the serialized
    ``ModelInferRequest`` ``data`` holds twice, e.g. ``("parameters", "user_id")`` or
    ``("inputs[1].parameters", "binary_data_size")``; None when every key is sent once.
    ``request``: ``data`` as protobuf parsed it. Raises protobuf's ``DecodeError`` for an
    entry whose key is not UTF-8, which protobuf can leave out of a map unread."""
    entries = MapEntries.FromString(data)
    if len(entries.parameters) != len(request.parameters):
        if (key := _first_repeat(entries.parameters)) is not None:
            return "parameters", key
    for index, (listed, parsed) in enumerate(zip(entries.inputs, request.inputs)):
        if len(listed.parameters) != len(parsed.parameters):
            if (key := _first_repeat(listed.parameters)) is not None:
                return f"inputs[{index}].parameters", key
    for index, (listed, parsed) in enumerate(zip(entries.outputs, request.outputs)):
        if len(listed.parameters) != len(parsed.parameters):
            if (key := _first_repeat(listed.parameters)) is not None:
                return f"outputs[{index}].parameters", key
    return None


def _first_repeat(entries: Any) -> str | None:
    """The first key that comes a second time in a list of entries, in wire order."""
    seen: set[str] = set()
    for entry in entries:
        if entry.key in seen:
            return entry.key
        seen.add(entry.key)
    return None
