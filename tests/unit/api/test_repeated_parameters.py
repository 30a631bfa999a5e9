"""``serve_ab.api.grpc.repeated_parameters``: a ``parameters`` key sent twice in a
ModelInferRequest's wire bytes, which protobuf's parse keeps only the last of. Checked against
an oracle that reads the same bytes with the maps declared as plain repeated entries, so every
entry survives the parse."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_ab.api.grpc import grpc_predict_v2_pb2 as pb
from serve_ab.api.grpc.repeated_parameters import has_parameters, repeated_parameter


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


def request(user: str = "alice") -> pb.ModelInferRequest:
    out = pb.ModelInferRequest(model_name="digits", id="r1")
    out.parameters["user_id"].string_param = user
    tensor = out.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    tensor.parameters["binary_data_size"].int64_param = 256
    out.outputs.add(name="y").parameters["binary_data"].bool_param = True
    out.raw_input_contents.append(bytes(256))
    return out


def test_a_request_of_distinct_keys_has_no_repeat():
    data = request().SerializeToString()
    assert repeated_parameter(data) is None
    assert has_parameters(pb.ModelInferRequest.FromString(data))
    assert not has_parameters(pb.ModelInferRequest(model_name="digits"))


def test_the_request_key_twice_is_found_though_protobuf_keeps_only_the_last():
    bob = pb.ModelInferRequest()
    bob.parameters["user_id"].string_param = "bob"
    data = request("alice").SerializeToString() + bob.SerializeToString()  # concatenation merges
    assert pb.ModelInferRequest.FromString(data).parameters["user_id"].string_param == "bob"
    assert repeated_parameter(data) == ("parameters", "user_id")


def test_a_tensor_key_twice_names_the_tensor():
    data = request().SerializeToString()
    again = pb.ModelInferRequest()
    second = again.inputs.add(name="z")
    second.parameters["a"].int64_param = 1
    # A second input with its own key is no repeat; the same key twice in one tensor is.
    assert repeated_parameter(data + again.SerializeToString()) is None
    entry = pb.ModelInferRequest.InferInputTensor()
    entry.parameters["a"].int64_param = 2
    # One tensor's bytes holding "a" twice (a message's bytes concatenated merge into one).
    tensor_bytes = second.SerializeToString() + entry.SerializeToString()
    field_5 = b"\x2a" + _varint(len(tensor_bytes)) + tensor_bytes
    assert repeated_parameter(data + field_5) == ("inputs[1].parameters", "a")
    out_entry = pb.ModelInferRequest.InferRequestedOutputTensor(name="y")
    out_entry.parameters["binary_data"].bool_param = False
    out_bytes = out_entry.SerializeToString() * 2
    field_6 = b"\x32" + _varint(len(out_bytes)) + out_bytes
    assert repeated_parameter(data + field_6) == ("outputs[1].parameters", "binary_data")


def test_an_entry_with_its_key_twice_has_the_last_as_protobuf_reads_it():
    def entry(*keys: bytes) -> bytes:  # field 4 of the request: a map entry of these key fields
        body = b"".join(b"\x0a" + _varint(len(k)) + k for k in keys)
        return b"\x22" + _varint(len(body)) + body

    data = entry(b"a", b"b") + entry(b"b")
    assert list(pb.ModelInferRequest.FromString(data).parameters) == ["b"]
    assert repeated_parameter(data) == ("parameters", "b")
    assert repeated_parameter(entry(b"a", b"b") + entry(b"a")) is None
    assert repeated_parameter(entry() + entry(b"")) == ("parameters", "")  # no key field is ""


def test_the_scan_steps_over_tensor_bytes_by_their_length():
    big = request()
    big.raw_input_contents[0] = b"\x22\x04user" * 50_000  # bytes that look like entries
    assert repeated_parameter(big.SerializeToString()) is None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


KEYS = st.sampled_from(["user_id", "a", "", "é", "binary_data_size"])


@st.composite
def wire_requests(draw) -> bytes:
    """A ModelInferRequest's bytes as concatenated pieces (protobuf merges them), so keys can
    repeat in one map; some with unknown fields of every wire type, groups included."""
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        piece = pb.ModelInferRequest()
        kind = draw(st.sampled_from(["parameters", "input", "output", "other", "unknown"]))
        if kind == "parameters":
            piece.parameters[draw(KEYS)].int64_param = draw(st.integers(-5, 5))
        elif kind in ("input", "output"):
            tensor = piece.inputs.add() if kind == "input" else piece.outputs.add()
            for key in draw(st.lists(KEYS, max_size=3)):
                tensor.parameters[key].string_param = "v"
            if kind == "input":
                tensor.shape.extend(draw(st.lists(st.integers(0, 2**40), max_size=3)))
        elif kind == "other":
            piece.model_name = draw(st.text(max_size=5))
            piece.raw_input_contents.append(draw(st.binary(max_size=40)))
        data = piece.SerializeToString()
        if kind == "unknown":  # field 99: varint, fixed64, a group holding a group, fixed32
            data = (b"\x98\x06" + _varint(draw(st.integers(0, 2**63))) + b"\x99\x06" + bytes(8)
                    + b"\x9b\x06" + b"\x93\x06" + b"\x08\x01" + b"\x94\x06" + b"\x12\x00" + b"\x9c\x06"
                    + b"\x9d\x06" + bytes(4))
        pieces.append(data)
    return b"".join(pieces)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_requests())
def test_generated_requests_agree_with_the_oracle(data):
    parsed = pb.ModelInferRequest.FromString(data)
    found = repeated_parameter(data)
    assert found == oracle(data)
    if found is not None:
        assert has_parameters(parsed)  # the scan's trigger misses no repeat


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_bytes_that_parse_never_break_the_scan(data):
    try:
        pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    assert repeated_parameter(data) == oracle(data)
