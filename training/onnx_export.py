"""Tree-ensemble ONNX form of a LightGBM binary booster, and the ONNX Runtime session helpers.

The CPU form is onnxmltools' ``TreeEnsembleClassifier`` (about 20 us a row, faster than LightGBM
itself), wrapped so that it has the same interface as the GEMM form in ``training.gemm_onnx``: input
``features`` float32 [N, F], one output ``probability`` float32 [N].

Two gaps between onnxmltools' graph and LightGBM are closed here rather than accepted:

* ORT keeps thresholds in float32 and rounds them to nearest, so a float32 value between the
  float32 and the double threshold took the other branch. The booster is re-read with every
  threshold rounded *down* to float32, which for float32 input splits exactly as the double does.
* onnxmltools maps LightGBM's missing types only partly: a ``Zero``-type feature's zeros went by
  the comparison instead of ``default_left``, and a ``None``-type NaN went right whenever
  ``default_left`` was false, where LightGBM compares it as 0. A few standard operators in front
  of the ensemble put each value in the form the ensemble's ``missing_value_tracks_true`` then
  routes the LightGBM way: ``|x| <= 1e-35`` becomes 0; NaN becomes 0 on ``None`` features; 0
  becomes NaN on ``Zero`` features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightgbm
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from cds_service.inference.sessions import session_for, used_providers
from training.gemm_onnx import (
    INPUT_NAME,
    MISSING_TYPES,
    OUTPUT_NAME,
    ZERO_THRESHOLD,
    UnsupportedBoosterError,
    float32_at_or_below,
    read_booster,
)

__all__ = [
    "UnsupportedBoosterError",
    "export_tree_ensemble",
    "save_model",
    "session_for",
    "used_providers",
]

# onnxmltools 1.16 converts LightGBM at default-domain opsets up to 15; LessOrEqual needs 12.
_OPSET = 15
_ENSEMBLE_INPUT = "lgbm_features"


def _with_float32_thresholds(booster: lightgbm.Booster) -> lightgbm.Booster:
    """The same booster with each threshold rounded down to float32 (see the module docstring)."""
    lines = []
    for line in booster.model_to_string().splitlines():
        if line.startswith("threshold="):
            values = line.removeprefix("threshold=").split()
            # repr() round-trips a double exactly, and LightGBM parses it back exactly.
            rounded = (repr(float(float32_at_or_below(float(v)))) for v in values)
            lines.append("threshold=" + " ".join(rounded))
        elif not line.startswith("tree_sizes="):
            # The byte sizes no longer hold once thresholds are rewritten; without them LightGBM
            # parses the trees one after another instead of jumping by offset.
            lines.append(line)
    return lightgbm.Booster(model_str="\n".join(lines) + "\n")


def _feature_missing_types(booster: lightgbm.Booster, n_features: int) -> list[str | None]:
    """Each feature's LightGBM ``missing_type`` (None where no tree splits on it)."""
    tables = read_booster(booster, n_features)
    if tables.sigmoid != 1.0 or tables.average_output:
        # onnxmltools' LOGISTIC post-transform ignores both.
        raise UnsupportedBoosterError(
            "the tree-ensemble form supports sigmoid:1 gradient boosting only; use export_gemm"
        )
    kinds: list[set[str]] = [set() for _ in range(n_features)]
    for feature, missing in zip(
        tables.feature[tables.is_node], tables.missing[tables.is_node], strict=True
    ):
        kinds[int(feature)].add(MISSING_TYPES[int(missing)])
    mixed = [i for i, kind in enumerate(kinds) if len(kind) > 1]
    if mixed:
        # The input rewrite is per feature; LightGBM takes missing_type from the feature's bins.
        raise UnsupportedBoosterError(f"features {mixed} have more than one missing_type")
    return [next(iter(kind)) if kind else None for kind in kinds]


def _bool_mask(name: str, values: list[bool]) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.bool_), name)


def _with_service_interface(model: onnx.ModelProto, missing: list[str | None]) -> onnx.ModelProto:
    """Put the missing-value rewrite in front and keep only column 1 of the probabilities."""
    graph = model.graph
    (probabilities,) = [
        o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT
    ]
    before = [
        helper.make_node("Abs", [INPUT_NAME], ["abs_x"]),
        helper.make_node("LessOrEqual", ["abs_x", "zero_threshold"], ["is_tiny"]),
        helper.make_node("Where", ["is_tiny", "zero", INPUT_NAME], ["x0"]),
        helper.make_node("IsNaN", ["x0"], ["x0_nan"]),
        helper.make_node("And", ["x0_nan", "none_features"], ["nan_as_zero"]),
        helper.make_node("Where", ["nan_as_zero", "zero", "x0"], ["x1"]),
        helper.make_node("Equal", ["x1", "zero"], ["x1_zero"]),
        helper.make_node("And", ["x1_zero", "zero_features"], ["zero_as_nan"]),
        helper.make_node("Where", ["zero_as_nan", "nan", "x1"], [_ENSEMBLE_INPUT]),
    ]
    after = [helper.make_node("Gather", [probabilities, "positive"], [OUTPUT_NAME], axis=1)]
    initializers = [
        numpy_helper.from_array(np.asarray(ZERO_THRESHOLD), "zero_threshold"),
        numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.asarray(np.nan, np.float32), "nan"),
        numpy_helper.from_array(np.asarray(1, np.int64), "positive"),
        _bool_mask("none_features", [kind == "None" for kind in missing]),
        _bool_mask("zero_features", [kind == "Zero" for kind in missing]),
    ]
    # Keep only the nodes the probability needs; the label branch (Identity, Cast) goes.
    needed = {probabilities}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.insert(0, node)
            needed.update(node.input)
    n_features = len(missing)
    new_graph = helper.make_graph(
        before + kept + after,
        "lightgbm_tree_ensemble",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=[*initializers, *(i for i in graph.initializer if i.name in needed)],
    )
    opsets = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import if o.domain]
    result = helper.make_model(
        new_graph,
        opset_imports=[helper.make_opsetid("", _OPSET), *opsets],
        producer_name="sepsis-cds training.onnx_export",
    )
    result.ir_version = 9
    onnx.checker.check_model(result, full_check=True)
    return result


def export_tree_ensemble(booster: lightgbm.Booster, n_features: int) -> onnx.ModelProto:
    """The booster's positive-class probability as an ``ai.onnx.ml`` tree-ensemble graph (CPU).

    Input ``features`` float32 [N, n_features], output ``probability`` float32 [N].
    """
    missing = _feature_missing_types(booster, n_features)
    converted = convert_lightgbm(
        _with_float32_thresholds(booster),
        initial_types=[(_ENSEMBLE_INPUT, FloatTensorType([None, n_features]))],
        target_opset=_OPSET,
        zipmap=False,
    )
    return _with_service_interface(converted, missing)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> str:
    """Write ``model`` to ``path`` and return the sha256 (hex) of the bytes written."""
    data = model.SerializeToString()
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
