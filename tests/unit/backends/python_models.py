"""Python-backend model classes for the unit tests (importable as tests.unit.backends.python_models)."""

from __future__ import annotations

import threading

import numpy as np

from serve_ab.backends.base import InputSpec, OutputSpec


class Linear:
    """Two named inputs, one output, declared on the class; ``load`` reads weights from a .npy."""

    input_spec = [InputSpec("demographics", np.float32, (-1, 4)), InputSpec("blood", np.float32, (-1, 6))]
    output_spec = OutputSpec("value", np.float32, (-1, 1))

    def load(self, path):
        self.weight = np.load(path) if path else np.ones(10, dtype=np.float32)
        self.calls = []

    def predict(self, inputs):
        self.calls.append(len(inputs["demographics"]))
        x = np.concatenate([inputs["demographics"], inputs["blood"]], axis=1)
        return (x @ self.weight)[:, None]


class TwoOutputs:
    """Declares nothing: inputs come from the config, outputs from a first call."""

    def load(self, path):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        return {"total": x.sum(axis=1, keepdims=True), "label": (x[:, :1] > 0).astype(np.int64)}


class Text:
    """A BYTES input: the length of each string."""

    input_spec = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    output_spec = {"name": "length", "datatype": "INT64", "shape": [-1]}

    def load(self, path):
        pass

    def predict(self, inputs):
        return np.array([len(v) for v in inputs["text"]], dtype=np.int64)


class NoPredict:
    def load(self, path):
        pass


class WrongShape:
    input_spec = InputSpec("x", np.float32, (-1, 2))
    output_spec = OutputSpec("y", np.float32, (-1, 3))

    def load(self, path):
        pass

    def predict(self, inputs):
        return np.zeros((len(inputs["x"]), 2), dtype=np.float32)


NOT_A_CLASS = 3


class Tagged:
    """Three outputs, one of them BYTES that are not all UTF-8: a sum, a label and a tag."""

    input_spec = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
    output_spec = [{"name": "sum", "datatype": "FP32", "shape": [-1, 1]},
                   {"name": "label", "datatype": "INT64", "shape": [-1, 1]},
                   {"name": "tag", "datatype": "BYTES", "shape": [-1, 1]}]

    def load(self, path):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        tags = np.array([[b"\x80\xfe\xff\x00" if row[0] < 0 else b"ok"] for row in x], dtype=object)
        return {"sum": x.sum(axis=1, keepdims=True), "label": (x[:, :1] > 0).astype(np.int64), "tag": tags}


class EchoUint64:
    """Answers its UINT64 input as it came: what the model saw."""

    input_spec = [{"name": "x", "datatype": "UINT64", "shape": [-1, 2]}]
    output_spec = [{"name": "y", "datatype": "UINT64", "shape": [-1, 2]}]

    def load(self, path):
        pass

    def predict(self, inputs):
        return inputs["x"].copy()


class Scores:
    """One output, the input itself: four scores per instance."""

    input_spec = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    output_spec = [{"name": "scores", "datatype": "FP32", "shape": [-1, 4]}]

    def load(self, path):
        pass

    def predict(self, inputs):
        return inputs["x"].copy()


class HeldDigits:
    """A digits classifier (64 features, 10 classes) whose every call waits until ``RELEASE``
    is set: a shadow slower than the live traffic, on the test's cue. A call that waited
    ``WAIT_S`` in vain counts in ``timed_out`` (nobody released it: its caller was stuck)."""

    RELEASE = threading.Event()
    WAIT_S = 10.0
    timed_out = 0
    input_spec = [InputSpec("input", np.float32, (-1, 64))]
    output_spec = OutputSpec("probabilities", np.float32, (-1, 10))

    def load(self, path):
        pass

    def predict(self, inputs):
        if not HeldDigits.RELEASE.wait(HeldDigits.WAIT_S):
            HeldDigits.timed_out += 1
        out = np.zeros((len(inputs["input"]), 10), dtype=np.float32)
        out[:, 3] = 1.0
        return out
