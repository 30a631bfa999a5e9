"""Build the example model repository from scikit-learn's bundled digits.

Three versions of one classifier (8x8 digit images as 64 pixel values 0..16 -> 10 class
probabilities), laid out Triton-style so the serving layer has something real to route::

    models/digits/samples.json      64 held-out instances and their labels
    models/digits/v1/model.onnx     MLP 64-64-10          (the baseline)
    models/digits/v2/model.pt2      MLP 64-128-64-10      (torch.export, as good or better)
    models/digits/v3/model.onnx     MLP 64-16-10 on 60 rows (clearly worse: for rollbacks)
    models/digits/<v>/metrics.json  test accuracy measured on the written file

Every model takes ``input`` (float32, [batch, 64]) and returns ``probabilities``
(float32, [batch, 10]); softmax is inside the model.

Beside them, a regression with two inputs, from scikit-learn's bundled ``diabetes`` data
(442 patients, ten baseline variables -> a disease progression score a year later)::

    models/diabetes/samples.json    32 held-out instances ({"inputs": {name: rows}, "targets"})
    models/diabetes/v1/model.onnx   least squares (Concat + Gemm), the baseline
    models/diabetes/v2/model.pt2    MLP 10-32-1 (torch.export, two tensor arguments)

Both take ``demographics`` (float32, [batch, 4]: age, sex, bmi, bp) and ``blood``
(float32, [batch, 6]: s1..s6), scaled as scikit-learn ships them, and return ``value``
(float32, [batch, 1]). Seeds and the split are fixed and
torch runs on one thread, so a rebuild on the same stack gives the same predictions.

Run ``python models/build.py [--out models]`` from the repository root.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_NAME = "digits"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
N_FEATURES = 64
N_CLASSES = 10
PIXEL_MAX = 16.0
SPLIT_SEED = 0
TEST_FRACTION = 0.25
N_SAMPLES = 64
BATCH_SIZE = 64
# Opset 17 / IR 8 load in every onnxruntime the project accepts (>= 1.20, CPU and GPU).
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
# Tolerance between onnxruntime and torch on the same weights; checked at build time.
ONNX_MAX_ABS_DIFF = 1e-5


@dataclass(frozen=True)
class Recipe:
    """How one version is trained and written."""

    version: str
    backend: str  # "onnx" or "torch", as the serving config names backends
    hidden: tuple[int, ...]
    seed: int
    epochs: int
    learning_rate: float
    train_limit: int | None  # first rows of the training split; None: all of it
    description: str

    @property
    def filename(self) -> str:
        return "model.onnx" if self.backend == "onnx" else "model.pt2"

    @property
    def architecture(self) -> str:
        widths = (N_FEATURES, *self.hidden, N_CLASSES)
        return "MLP " + "-".join(map(str, widths)) + ", ReLU, softmax"


RECIPES: tuple[Recipe, ...] = (
    Recipe("v1", "onnx", (64,), seed=0, epochs=40, learning_rate=1e-2, train_limit=None,
           description="baseline MLP, exported to ONNX"),
    Recipe("v2", "torch", (128, 64), seed=1, epochs=40, learning_rate=5e-3, train_limit=None,
           description="wider two-layer MLP saved with torch.export; as good as v1 or better"),
    # 60 rows and 16 units give ~80-84% over seeds 0-5: worse enough to fail a canary,
    # stable enough not to hinge on one seed (4-8 units swing between 50% and 80%).
    Recipe("v3", "onnx", (16,), seed=2, epochs=40, learning_rate=3e-2, train_limit=60,
           description="deliberately weak: 16 hidden units, 60 training rows; for rollback demos"),
)


DIABETES = "diabetes"
DIABETES_INPUTS = (("demographics", 4), ("blood", 6))
DIABETES_OUTPUT = "value"
DIABETES_SAMPLES = 32
DIABETES_SEED = 3
DIABETES_HIDDEN = 32
DIABETES_STEPS = 400
DIABETES_FILES = {"v1": "model.onnx", "v2": "model.pt2"}


def model_path(out_dir: Path, recipe: Recipe) -> Path:
    return Path(out_dir) / MODEL_NAME / recipe.version / recipe.filename


def samples_path(out_dir: Path) -> Path:
    return Path(out_dir) / MODEL_NAME / "samples.json"


def expected_files(out_dir: Path) -> list[Path]:
    """Every file a complete build writes."""
    files = [samples_path(out_dir)]
    for recipe in RECIPES:
        model = model_path(out_dir, recipe)
        files += [model, model.with_name("metrics.json")]
    files.append(Path(out_dir) / DIABETES / "samples.json")
    for version, filename in DIABETES_FILES.items():
        files += [Path(out_dir) / DIABETES / version / filename, Path(out_dir) / DIABETES / version / "metrics.json"]
    return files


def is_built(out_dir: Path) -> bool:
    return all(path.is_file() for path in expected_files(out_dir))


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/test split: ``(x_train, y_train, x_test, y_test)``, x float32 0..16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return x_train, y_train, x_test, y_test


def build_all(out_dir: Path) -> dict[str, float]:
    """Train, write and check every version (digits and diabetes); returns the digits
    versions' ``{version: test accuracy}`` (diabetes': :func:`build_diabetes`)."""
    import torch

    out_dir = Path(out_dir)
    x_train, y_train, x_test, y_test = load_split()
    _write_samples(out_dir, x_test, y_test)

    previous_threads = torch.get_num_threads()
    # One thread makes float reductions run in a fixed order, so rebuilds are identical.
    torch.set_num_threads(1)
    try:
        accuracies = {}
        for recipe in RECIPES:
            logits = _train(recipe, x_train, y_train)
            path = model_path(out_dir, recipe)
            path.parent.mkdir(parents=True, exist_ok=True)
            if recipe.backend == "onnx":
                _write_onnx(logits, path, x_test)
            else:
                _write_pt2(logits, path)
            probabilities = _predict_file(path, recipe.backend, x_test)
            accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
            _write_metrics(path.with_name("metrics.json"), recipe, accuracy, len(y_test),
                           len(y_train) if recipe.train_limit is None else recipe.train_limit)
            accuracies[recipe.version] = accuracy
        build_diabetes(out_dir)
    finally:
        torch.set_num_threads(previous_threads)
    return accuracies


# ---- diabetes: a regression with two inputs --------------------------------------------------


def load_diabetes_split() -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """``(inputs_train, y_train, inputs_test, y_test)``; inputs by name, float32."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    return _diabetes_inputs(x_train), y_train, _diabetes_inputs(x_test), y_test


def _diabetes_inputs(x: np.ndarray) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name, width in DIABETES_INPUTS:
        out[name] = np.ascontiguousarray(x[:, start:start + width])
        start += width
    return out


def build_diabetes(out_dir: Path) -> dict[str, dict[str, float]]:
    """Fit, write and check both diabetes versions; returns ``{version: {"rmse", "mae"}}``."""
    import torch

    out_dir = Path(out_dir)
    train, y_train, test, y_test = load_diabetes_split()
    root = out_dir / DIABETES
    samples = {"inputs": {name: array[:DIABETES_SAMPLES].tolist() for name, array in test.items()},
               "targets": y_test[:DIABETES_SAMPLES].tolist()}
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / "samples.json", (json.dumps(samples) + "\n").encode())
    x_train = np.concatenate([train[name] for name, _ in DIABETES_INPUTS], axis=1).astype(np.float64)
    # v1: ordinary least squares, solved exactly (float64), written as Concat + Gemm.
    design = np.hstack([x_train, np.ones((len(x_train), 1))])
    coef, *_ = np.linalg.lstsq(design, y_train.astype(np.float64), rcond=None)
    weight, bias = coef[:-1].astype(np.float32), coef[-1:].astype(np.float32)
    scores = {}
    for version, filename in DIABETES_FILES.items():
        path = root / version / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if version == "v1":
            _write_diabetes_onnx(weight, bias, path)
            description, architecture = "least squares on the ten variables", "linear 10-1"
        else:
            previous = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                _write_diabetes_pt2(_train_diabetes_mlp(x_train.astype(np.float32), y_train), path)
            finally:
                torch.set_num_threads(previous)
            description, architecture = "MLP on the ten variables", f"MLP 10-{DIABETES_HIDDEN}-1, ReLU"
        predicted = _predict_diabetes(path, test)[:, 0]
        rmse = float(np.sqrt(np.mean((predicted - y_test) ** 2)))
        mae = float(np.mean(np.abs(predicted - y_test)))
        scores[version] = {"rmse": rmse, "mae": mae}
        metrics = {"model": DIABETES, "version": version, "backend": "onnx" if filename.endswith("onnx") else "torch",
                   "file": filename, "rmse": round(rmse, 3), "mae": round(mae, 3), "n_test": len(y_test),
                   "n_train": len(y_train), "architecture": architecture, "description": description,
                   "build": {"script": "models/build.py", "dataset": "sklearn.datasets.load_diabetes",
                             "split": f"train_test_split(test_size={TEST_FRACTION}, random_state={SPLIT_SEED})",
                             "seed": DIABETES_SEED}}
        _write_atomic(path.with_name("metrics.json"), (json.dumps(metrics, indent=2) + "\n").encode())
    return scores


def _write_diabetes_onnx(weight: np.ndarray, bias: np.ndarray, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(weight.reshape(-1, 1), "weight")
    b = numpy_helper.from_array(bias, "bias")
    names = [name for name, _ in DIABETES_INPUTS]
    nodes = [helper.make_node("Concat", names, ["features"], name="concat", axis=1),
             helper.make_node("Gemm", ["features", "weight", "bias"], [DIABETES_OUTPUT], name="linear")]
    graph = helper.make_graph(
        nodes, DIABETES,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width]) for name, width in DIABETES_INPUTS],
        [helper.make_tensor_value_info(DIABETES_OUTPUT, TensorProto.FLOAT, ["batch", 1])],
        initializer=[w, b])
    model = helper.make_model(graph, producer_name="serve-ab models/build.py", ir_version=ONNX_IR_VERSION,
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model, full_check=True)
    _write_atomic(path, model.SerializeToString())


def _train_diabetes_mlp(x: np.ndarray, y: np.ndarray):
    import torch
    from torch import nn

    mean, std = float(y.mean()), float(y.std())
    features, target = torch.from_numpy(x), torch.from_numpy((y - mean) / std).unsqueeze(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DIABETES_SEED)
        net = nn.Sequential(nn.Linear(x.shape[1], DIABETES_HIDDEN), nn.ReLU(), nn.Linear(DIABETES_HIDDEN, 1))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(DIABETES_STEPS):  # full batch: 331 rows
            optimizer.zero_grad()
            nn.functional.mse_loss(net(features), target).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():  # predict in the target's own units
        net[2].weight.mul_(std)
        net[2].bias.mul_(std).add_(mean)
    return net


def _write_diabetes_pt2(net, path: Path) -> None:
    import torch
    from torch import nn

    class Regressor(nn.Module):
        __module__ = "models.build"  # fixed, for byte-identical rebuilds (see _write_pt2)
        __qualname__ = "Regressor"

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, demographics: torch.Tensor, blood: torch.Tensor) -> dict[str, torch.Tensor]:
            return {DIABETES_OUTPUT: self.net(torch.cat([demographics, blood], dim=1))}

    batch = torch.export.Dim("batch", min=1)
    example = tuple(torch.zeros(8, width) for _, width in DIABETES_INPUTS)
    program = torch.export.export(Regressor(net).eval(), example,
                                  dynamic_shapes={name: {0: batch} for name, _ in DIABETES_INPUTS})
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    _write_atomic(path, buffer.getvalue())


def _predict_diabetes(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([DIABETES_OUTPUT], inputs)[0]
    import torch

    module = torch.export.load(str(path)).module()
    with torch.inference_mode():
        args = [torch.from_numpy(inputs[name]) for name, _ in DIABETES_INPUTS]
        return module(*args)[DIABETES_OUTPUT].numpy()


def _train(recipe: Recipe, x_train: np.ndarray, y_train: np.ndarray):
    """Train the logits network; returns it in eval mode, taking raw 0..16 pixels."""
    import torch
    from torch import nn

    if recipe.train_limit is not None:
        x_train, y_train = x_train[:recipe.train_limit], y_train[:recipe.train_limit]
    features = torch.from_numpy(x_train / np.float32(PIXEL_MAX))
    labels = torch.from_numpy(y_train)
    # fork_rng keeps the caller's global torch RNG untouched (tests build in-process).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        layers: list[nn.Module] = []
        width = N_FEATURES
        for hidden in recipe.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        logits = nn.Sequential(*layers, nn.Linear(width, N_CLASSES))
        shuffle = torch.Generator().manual_seed(recipe.seed)
        optimizer = torch.optim.Adam(logits.parameters(), lr=recipe.learning_rate)
        for _ in range(recipe.epochs):
            order = torch.randperm(len(labels), generator=shuffle)
            for start in range(0, len(order), BATCH_SIZE):
                rows = order[start:start + BATCH_SIZE]
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(logits(features[rows]), labels[rows])
                loss.backward()
                optimizer.step()
    logits.eval()
    with torch.no_grad():
        # Fold the 1/16 input scaling into the first layer so the model takes raw pixels;
        # dividing by a power of two is exact, so nothing changes numerically.
        logits[0].weight.div_(PIXEL_MAX)
    return logits


def _reference_probabilities(logits, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.softmax(logits(torch.from_numpy(x)), dim=-1).numpy()


def _write_onnx(logits, path: Path, x_check: np.ndarray) -> None:
    """Write the network as an ONNX graph (Gemm/Relu/Softmax) built from its weights.

    torch 2.13's default exporter needs onnxscript and the TorchScript one is deprecated;
    an MLP is four node types, so writing the graph directly keeps the build free of both
    and makes the file a pure function of the weights.
    """
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    from torch import nn

    nodes, initializers = [], []
    current = INPUT_NAME
    for index, layer in enumerate(logits):
        out = f"layer{index}"
        if isinstance(layer, nn.Linear):
            weight = numpy_helper.from_array(
                layer.weight.detach().numpy().astype(np.float32), f"layer{index}.weight")
            bias = numpy_helper.from_array(
                layer.bias.detach().numpy().astype(np.float32), f"layer{index}.bias")
            initializers += [weight, bias]
            # torch stores Linear weights as [out, in]; transB=1 uses them as they are.
            nodes.append(helper.make_node(
                "Gemm", [current, weight.name, bias.name], [out], name=out, transB=1))
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [out], name=out))
        else:
            raise TypeError(f"cannot write layer {index} ({type(layer).__name__}) to ONNX; "
                            "only Linear and ReLU are supported")
        current = out
    nodes.append(helper.make_node("Softmax", [current], [OUTPUT_NAME], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes, MODEL_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", N_CLASSES])],
        initializer=initializers)
    model = helper.make_model(
        graph, producer_name="serve-ab models/build.py", ir_version=ONNX_IR_VERSION,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model, full_check=True)
    payload = model.SerializeToString()

    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x_check})
    diff = float(np.max(np.abs(got - _reference_probabilities(logits, x_check))))
    if diff > ONNX_MAX_ABS_DIFF:
        raise RuntimeError(f"ONNX graph for {path} differs from torch by {diff:.2e} "
                           f"(allowed {ONNX_MAX_ABS_DIFF:.0e}); the graph writer is wrong")
    _write_atomic(path, payload)


def _write_pt2(logits, path: Path) -> None:
    import torch
    from torch import nn

    class Classifier(nn.Module):
        # A dict output carries the output's name inside the .pt2 (the exported
        # program's out_spec), as ONNX does; the argument name becomes the input's name.
        # The class path is recorded in the file: fix it, or `python models/build.py`
        # (module __main__) and `import models.build` would write different bytes.
        __module__ = "models.build"
        __qualname__ = "Classifier"

        def __init__(self, logits: nn.Module):
            super().__init__()
            self.logits = logits

        def forward(self, input: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: A002
            return {OUTPUT_NAME: torch.softmax(self.logits(input), dim=-1)}

    # An example batch above 1 keeps export from specialising the batch dim to 1.
    example = (torch.zeros(8, N_FEATURES),)
    program = torch.export.export(
        Classifier(logits).eval(), example,
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}})
    # Stack traces hold absolute paths and line numbers of this machine's checkout;
    # they only help debug export, and would make the bytes depend on where we ran.
    for node in program.graph.nodes:
        node.meta.pop("stack_trace", None)
    # Saved through a buffer: given a path, torch names the archive's top folder after the
    # file, which would put the temporary name inside the model.
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    _write_atomic(path, buffer.getvalue())


def _predict_file(path: Path, backend: str, x: np.ndarray) -> np.ndarray:
    """Run the file as written, so metrics describe what will be served."""
    if backend == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    import torch

    module = torch.export.load(str(path)).module()
    with torch.inference_mode():
        return module(torch.from_numpy(x))[OUTPUT_NAME].numpy()


def _write_samples(out_dir: Path, x_test: np.ndarray, y_test: np.ndarray) -> None:
    # Round-robin over classes so every digit is in the set (7 of 0-3, 6 of the rest).
    per_class = [np.flatnonzero(y_test == digit) for digit in range(N_CLASSES)]
    rows = [per_class[i % N_CLASSES][i // N_CLASSES] for i in range(N_SAMPLES)]
    samples = {"inputs": x_test[rows].tolist(), "labels": y_test[rows].tolist()}
    path = samples_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(samples) + "\n").encode())


def _write_metrics(path: Path, recipe: Recipe, accuracy: float, n_test: int,
                   n_train: int) -> None:
    import onnx
    import sklearn
    import torch

    metrics = {
        "model": MODEL_NAME,
        "version": recipe.version,
        "backend": recipe.backend,
        "file": recipe.filename,
        "accuracy": round(accuracy, 4),
        "n_test": n_test,
        "n_train": n_train,
        "architecture": recipe.architecture,
        "description": recipe.description,
        "build": {
            "script": "models/build.py",
            "dataset": "sklearn.datasets.load_digits",
            "split": f"train_test_split(test_size={TEST_FRACTION}, "
                     f"random_state={SPLIT_SEED}, stratify=y)",
            "seed": recipe.seed,
            "epochs": recipe.epochs,
            "learning_rate": recipe.learning_rate,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnx_opset": ONNX_OPSET if recipe.backend == "onnx" else None,
            "scikit_learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }
    _write_atomic(path, (json.dumps(metrics, indent=2) + "\n").encode())


def _write_atomic(path: Path, payload: bytes) -> None:
    # Tests build on demand, possibly from two processes at once; a reader must never see
    # half a file, and is_built must never pass on one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="model repository to write into (default: this models/ folder)")
    args = parser.parse_args(argv)
    started_s = time.perf_counter()
    accuracies = build_all(args.out)
    elapsed_s = time.perf_counter() - started_s
    for recipe in RECIPES:
        print(f"{MODEL_NAME}/{recipe.version}  {recipe.backend:5}  "
              f"accuracy {accuracies[recipe.version]:.4f}  {recipe.architecture}")
    for version in DIABETES_FILES:
        figures = json.loads((Path(args.out) / DIABETES / version / "metrics.json").read_text())
        print(f"{DIABETES}/{version}  {'onnx' if DIABETES_FILES[version].endswith('onnx') else 'torch':5}  "
              f"RMSE {figures['rmse']:.2f}  MAE {figures['mae']:.2f}")
    print(f"wrote {Path(args.out) / MODEL_NAME} and {Path(args.out) / DIABETES} in {elapsed_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
