"""``serve_ab.api.grpc.repeated_parameters``: a ``parameters`` key sent twice in a
ModelInferRequest's wire bytes, which protobuf's parse keeps only the last of. Checked against
an oracle that reads the same bytes with the generated message's maps declared as plain
repeated entries (every entry kept, every other field read as usual), on requests built from
raw wire bytes: repeats in every map, entries protobuf leaves out of a map, unknown fields of
every wire type, groups in groups; and through the parser Ray's gRPC proxy runs."""

from __future__ import annotations

import json

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc.repeated_parameters import MapEntries, _tensors_hold_entries, repeated_parameter
from serve_ab.api.grpc.servicer import RepeatedParameter, lenient_parser


def _entries_twin() -> type:
    """ModelInferRequest with every map a repeated field of its entry message: the same wire
    format, but the parse keeps each entry."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)

    def unmap(message: descriptor_pb2.DescriptorProto) -> None:
        for nested in message.nested_type:
            nested.options.map_entry = False
            unmap(nested)

    for message in proto.message_type:
        unmap(message)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferRequest"))


TWIN = _entries_twin()


def oracle(data: bytes) -> tuple[str, str] | None:
    twin = TWIN.FromString(data)
    maps = [("parameters", twin.parameters)]
    maps += [(f"inputs[{i}].parameters", t.parameters) for i, t in enumerate(twin.inputs)]
    maps += [(f"outputs[{i}].parameters", t.parameters) for i, t in enumerate(twin.outputs)]
    for where, entries in maps:
        seen: set[str] = set()
        for entry in entries:
            if entry.key in seen:
                return where, entry.key
            seen.add(entry.key)
    return None


PARSE = lenient_parser(pb.ModelInferRequest)


def found(data: bytes) -> tuple[str, str] | None:
    """The repeat in ``data``, checked to be what the proxy's parser refuses it for."""
    repeat = repeated_parameter(data)
    refused = PARSE(data)
    if repeat is None:
        assert refused == pb.ModelInferRequest.FromString(data)
    else:
        assert isinstance(refused, RepeatedParameter)
        # Quoted as JSON, as the HTTP routes quote a key sent twice.
        assert refused.describe() == f"duplicate key {json.dumps(repeat[1])} in {repeat[0]}; send each key once"
    return repeat


# -- wire bytes by hand ----------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _length(number: int, body: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(body)) + body


def entry(number: int, *keys: bytes, extra: bytes = b"") -> bytes:
    """A map entry at field ``number``: a key field per ``keys``, an int64 value, ``extra``."""
    body = b"".join(_length(1, key) for key in keys) + _length(2, _tag(2, 0) + _varint(7)) + extra
    return _length(number, body)


def test_the_entries_message_reads_the_field_numbers_of_the_proto():
    def numbers(message) -> dict[str, int]:  # each map's path -> field number, and the key's
        out = {name: message.fields_by_name[name].number for name in ("parameters", "inputs", "outputs")}
        for name in ("inputs", "outputs"):
            tensor = message.fields_by_name[name].message_type
            out[name + ".parameters"] = tensor.fields_by_name["parameters"].number
        out["key"] = message.fields_by_name["parameters"].message_type.fields_by_name["key"].number
        return out

    assert numbers(MapEntries.DESCRIPTOR) == numbers(pb.ModelInferRequest.DESCRIPTOR)


def request(user: str = "alice") -> pb.ModelInferRequest:
    out = pb.ModelInferRequest(model_name="digits", id="r1")
    out.parameters["user_id"].string_param = user
    tensor = out.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    tensor.parameters["binary_data_size"].int64_param = 256
    out.outputs.add(name="y").parameters["binary_data"].bool_param = True
    out.raw_input_contents.append(bytes(256))
    return out


def test_a_request_of_distinct_keys_has_no_repeat():
    assert found(request().SerializeToString()) is None
    assert found(pb.ModelInferRequest(model_name="digits").SerializeToString()) is None
    assert found(b"") is None


def test_a_tensor_repeat_is_found_whatever_the_request_map_holds_and_however_many_tensors():
    keyed = request()
    keyed.parameters["session"].string_param = "s1"
    data = keyed.SerializeToString()
    assert found(data + _length(5, entry(4, b"k") * 2)) == ("inputs[1].parameters", "k")
    empty_inputs = _length(5, b"") * 100
    assert found(data + empty_inputs + _length(5, entry(4, b"k") * 2) + empty_inputs) \
        == ("inputs[101].parameters", "k")
    one_each = b"".join(_length(5, entry(4, b"k")) for _ in range(100))
    assert found(data + one_each) is None
    assert found(one_each + _length(6, b"") * 50 + _length(6, entry(2, b"x") * 2)) == ("outputs[50].parameters", "x")


def test_the_shortcut_past_the_tensors_sees_any_entry_of_any_tensor_and_nothing_else():
    """The C-side answer that spares most requests a Python step per tensor."""
    def holds(data: bytes) -> bool:
        return _tensors_hold_entries(MapEntries.FromString(data))

    unknown = _tag(99, 0) + _varint(5) + _length(98, b"x" * 300) + _tag(97, 3) + _tag(96, 0) + b"\x01" + _tag(97, 4)
    assert not holds(b"")
    assert not holds(entry(4, b"user_id") * 3 + _length(5, b"") * 200 + _length(6, b""))  # the request's own
    assert not holds(_length(5, _length(1, b"x") + _length(3, b"\x01\x40") + unknown) + _length(6, unknown))
    assert not holds(_length(7, b"\x22\x02\x0a\x00" * 100))  # tensor bytes that look like entries
    for tensors in (_length(5, entry(4)), _length(5, b"") * 50 + _length(6, entry(2, b"k")),
                    _length(6, entry(2)) + _length(5, b"")):
        assert holds(tensors), tensors  # one entry, even of the empty key, among empty tensors


def test_a_long_key_is_quoted_cut():
    refused = PARSE(entry(4, b"k" * 100) * 2)
    assert isinstance(refused, RepeatedParameter)
    assert refused.describe() == f'duplicate key "{"k" * 80}" in parameters; send each key once'


def test_the_request_key_twice_is_found_though_protobuf_keeps_only_the_last():
    bob = pb.ModelInferRequest()
    bob.parameters["user_id"].string_param = "bob"
    data = request("alice").SerializeToString() + bob.SerializeToString()  # concatenation merges
    assert pb.ModelInferRequest.FromString(data).parameters["user_id"].string_param == "bob"
    assert found(data) == ("parameters", "user_id")


def test_a_tensor_key_twice_names_the_tensor():
    data = request().SerializeToString()
    # A second input with its own "a" is no repeat; "a" twice in one tensor is.
    assert found(data + _length(5, _length(1, b"z") + entry(4, b"a"))) is None
    assert found(data + _length(5, _length(1, b"z") + entry(4, b"a") + entry(4, b"a"))) == ("inputs[1].parameters", "a")
    assert found(data + _length(6, _length(1, b"y") + entry(2, b"binary_data") * 2)) \
        == ("outputs[1].parameters", "binary_data")
    # Nothing but a tensor's map holds a parameter: the trigger still looks.
    bare = pb.ModelInferRequest(model_name="digits").SerializeToString()
    assert found(bare + _length(6, entry(2, b"k") + entry(2, b"k"))) == ("outputs[0].parameters", "k")
    assert found(bare + _length(5, entry(4, b"k") + entry(4, b"k"))) == ("inputs[0].parameters", "k")


def test_an_entry_with_its_key_twice_has_the_last_as_protobuf_reads_it():
    data = entry(4, b"a", b"b") + entry(4, b"b")
    assert list(pb.ModelInferRequest.FromString(data).parameters) == ["b"]
    assert found(data) == ("parameters", "b")
    assert found(entry(4, b"a", b"b") + entry(4, b"a")) is None
    assert found(entry(4) + entry(4, b"")) == ("parameters", "")  # no key field is the key ""


def test_an_entry_protobuf_leaves_out_of_its_map_counts_as_sent():
    """protobuf keeps an entry that carries a field of its own it does not know out of the map
    (in the message's unknown fields). It was sent all the same: its key sent again is a
    repeat, whichever entry the map kept."""
    odd = entry(4, b"a", extra=_tag(9, 0) + _varint(1))
    data = odd + entry(4, b"b")
    assert list(pb.ModelInferRequest.FromString(data).parameters) == ["b"]
    assert found(data) is None
    assert found(data + entry(4, b"a")) == ("parameters", "a")
    assert found(odd + odd) == ("parameters", "a")
    assert list(pb.ModelInferRequest.FromString(odd + odd).parameters) == []


def test_the_second_parse_steps_over_tensor_bytes():
    big = request()
    big.raw_input_contents[0] = entry(4, b"user") * 50_000  # bytes that look like entries
    assert found(big.SerializeToString()) is None


def test_the_parser_refuses_a_repeat_in_any_map_and_names_it():
    parse = lenient_parser(pb.ModelInferRequest)
    base = request().SerializeToString()
    for extra, key, where in [(entry(4, b"user_id"), "user_id", "parameters"),
                              (_length(5, entry(4, b"q") * 2), "q", "inputs[1].parameters"),
                              (_length(6, entry(2, b"q") * 2), "q", "outputs[1].parameters")]:
        refused = parse(base + extra)
        assert isinstance(refused, RepeatedParameter), where
        assert refused.describe() == f'duplicate key "{key}" in {where}; send each key once'
        assert refused.size_bytes == len(base + extra)


# -- generated requests ----------------------------------------------------------------------

KEYS = st.sampled_from([b"user_id", b"a", b"", "é".encode(), b"binary_data_size"])


def unknown_fields(depth: int = 0) -> st.SearchStrategy[bytes]:
    """Fields numbered past the message's (90-99): every wire type, groups holding groups."""
    number = st.integers(90, 99)
    scalar = st.one_of(
        st.builds(lambda n, v: _tag(n, 0) + _varint(v), number, st.integers(0, 2**64 - 1)),
        st.builds(lambda n, b: _tag(n, 1) + b, number, st.binary(min_size=8, max_size=8)),
        st.builds(lambda n, b: _tag(n, 5) + b, number, st.binary(min_size=4, max_size=4)),
        st.builds(lambda n, b: _length(n, b), number, st.binary(max_size=12)),
    )
    if depth >= 3:
        return scalar
    group = st.builds(lambda n, inner: _tag(n, 3) + b"".join(inner) + _tag(n, 4),
                      number, st.lists(st.deferred(lambda: unknown_fields(depth + 1)), max_size=3))
    return st.one_of(scalar, group)


def entries(number: int) -> st.SearchStrategy[bytes]:
    one = st.builds(lambda keys, extra: entry(number, *keys, extra=extra),
                    st.lists(KEYS, max_size=2), st.one_of(st.just(b""), unknown_fields()))
    return st.lists(one, max_size=4).map(b"".join)


@st.composite
def wire_requests(draw) -> bytes:
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["parameters", "input", "output", "other", "unknown"]))
        if kind == "parameters":
            pieces.append(draw(entries(4)))
        elif kind == "input":
            shape = _length(3, b"".join(_varint(d) for d in draw(st.lists(st.integers(0, 2**40), max_size=3))))
            pieces.append(_length(5, _length(1, b"x") + shape + draw(entries(4)) + draw(unknown_fields())))
        elif kind == "output":
            pieces.append(_length(6, _length(1, b"y") + draw(entries(2))))
        elif kind == "other":
            pieces.append(_length(1, b"digits") + _length(7, draw(st.binary(max_size=40))))
        else:
            pieces.append(draw(unknown_fields()))
    return b"".join(pieces)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_requests())
def test_generated_requests_agree_with_the_oracle(data):
    try:
        pb.ModelInferRequest.FromString(data)
    except DecodeError:
        assume(False)
    assert found(data) == oracle(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_bytes_that_parse_never_break_the_check(data):
    try:
        pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    assert found(data) == oracle(data)
