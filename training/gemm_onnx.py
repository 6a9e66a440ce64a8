"""Tensor (GEMM) form of a LightGBM binary booster, built from standard ONNX operators only.

ONNX Runtime's ``TreeEnsemble`` operators (``ai.onnx.ml``) have no CUDA kernel, so the GPU path
scores the same trees as dense tensor algebra. Every operator used here has a CUDA kernel, and every
step is exact in float32, with or without TF32:

* the split comparisons run on the raw float32 inputs against thresholds rounded *down* to float32:
  for a float32 ``x`` and a double ``t``, ``x <= t`` holds exactly when
  ``x <= float32_at_or_below(t)``;
* the path matrices hold only 0 and +-1 and the per-leaf counts are small integers, which TF32 and
  float32 both represent exactly;
* leaf values are picked with an elementwise ``Mul`` and summed with ``ReduceSum``, never a GEMM, so
  TF32 cannot truncate them.

LightGBM's missing-value rules (``Tree::NumericalDecision`` in LightGBM's ``tree.h``) are reproduced
per node: a NaN on a node whose ``missing_type`` is ``None`` counts as 0.0; with ``Zero``, 0.0 and
NaN go to the ``default_left`` side; with ``NaN``, NaN goes to the ``default_left`` side; everything
else goes left when ``x <= threshold``. Values with ``|x| <= 1e-35`` are 0.0, because LightGBM's
dense-row reader drops them (``kZeroThreshold``). Categorical splits and linear trees are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightgbm
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
# LightGBM's kZeroThreshold (a float literal, 1e-35f): |x| at or below it is zero, hence "missing"
# for missing_type Zero.
ZERO_THRESHOLD = np.float32(1e-35)
MISSING_TYPES = ("None", "Zero", "NaN")


class UnsupportedBoosterError(ValueError):
    """The booster uses something neither exported form reproduces (categorical splits, ...)."""


@dataclass(frozen=True)
class TreeTables:
    """The internal nodes and leaves of the T trees that split, padded to m nodes and l leaves.

    ``feature``, ``threshold``, ``default_left``, ``missing``, ``is_node`` (False on padding):
    [T, m], ``missing`` indexing ``MISSING_TYPES``. ``paths``: [T, m, l], +1 where a leaf needs the
    node to go left, -1 right. ``bias``: [T, l], the number of right-going nodes on the path.
    ``depth``: [T, l], the path length (-1 for padding, which no count reaches). ``leaf_value``:
    [T, l]. ``constant`` sums the trees that are a single leaf; ``scale`` multiplies the raw score
    before the sigmoid.
    """

    feature: npt.NDArray[np.int64]
    threshold: npt.NDArray[np.float32]
    default_left: npt.NDArray[np.bool_]
    missing: npt.NDArray[np.int8]
    is_node: npt.NDArray[np.bool_]
    paths: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    depth: npt.NDArray[np.float32]
    leaf_value: npt.NDArray[np.float32]
    constant: float
    scale: float
    sigmoid: float
    average_output: bool


def float32_at_or_below(threshold: float) -> np.float32:
    """The largest float32 not above ``threshold``: for float32 input, the same split."""
    # LightGBM writes "always left" splits with thresholds far above float32's range (1e300):
    # they overflow to inf, and the step below lands on float32's largest finite value.
    with np.errstate(over="ignore"):
        as_f32 = np.float32(threshold)
    if float(as_f32) > threshold:
        return np.float32(np.nextafter(as_f32, np.float32(-np.inf)))
    return as_f32


def _sigmoid_of(objective: str) -> float:
    """LightGBM writes the objective as ``binary sigmoid:<k>``; p = 1 / (1 + exp(-k * raw))."""
    tokens = objective.split()
    if not tokens or tokens[0] != "binary":
        raise UnsupportedBoosterError(f"only binary objectives are supported, not {objective!r}")
    for token in tokens[1:]:
        if token.startswith("sigmoid:"):
            return float(token.removeprefix("sigmoid:"))
    return 1.0


def _walk(root: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[float, list[int]]]]:
    """Internal nodes in visit order, and each leaf's value with its path as signed node numbers.

    A path entry ``+(i + 1)`` means node ``i`` must go left, ``-(i + 1)`` right. An explicit stack,
    not recursion: deep LightGBM trees can pass Python's recursion limit.
    """
    nodes: list[dict[str, Any]] = []
    leaves: list[tuple[float, list[int]]] = []
    stack: list[tuple[dict[str, Any], list[int]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        if "leaf_value" in node:
            if "leaf_coeff" in node:
                raise UnsupportedBoosterError("linear trees (linear_tree=True) are not supported")
            leaves.append((float(node["leaf_value"]), path))
            continue
        if node.get("decision_type") != "<=":
            raise UnsupportedBoosterError(
                f"split on feature {node.get('split_feature')} has decision_type "
                f"{node.get('decision_type')!r}; only numerical '<=' splits are supported "
                "(categorical features must be encoded as numbers before training)"
            )
        if node.get("missing_type") not in MISSING_TYPES:
            raise UnsupportedBoosterError(f"unknown missing_type {node.get('missing_type')!r}")
        number = len(nodes) + 1
        nodes.append(node)
        stack.append((node["right_child"], [*path, -number]))
        stack.append((node["left_child"], [*path, number]))
    return nodes, leaves


def read_booster(booster: lightgbm.Booster, n_features: int) -> TreeTables:
    """Check that ``booster`` is a supported binary model and lay its trees out as padded tables."""
    if booster.num_feature() != n_features:
        raise UnsupportedBoosterError(
            f"booster has {booster.num_feature()} features, the model input has {n_features}"
        )
    dump = booster.dump_model()
    if dump.get("num_class") != 1 or dump.get("num_tree_per_iteration") != 1:
        raise UnsupportedBoosterError("only binary boosters (one tree per iteration) are supported")
    sigmoid = _sigmoid_of(str(dump.get("objective", "")))
    trees = [_walk(info["tree_structure"]) for info in dump["tree_info"]]
    if not trees:
        raise UnsupportedBoosterError("booster has no trees")
    constant = sum(leaves[0][0] for nodes, leaves in trees if not nodes)
    split_trees = [(nodes, leaves) for nodes, leaves in trees if nodes]
    if not split_trees:
        raise UnsupportedBoosterError("booster has no splits; its risk would be a constant")
    average_output = bool(dump.get("average_output", False))
    # Random-forest boosters average their trees instead of summing them.
    scale = sigmoid / len(trees) if average_output else sigmoid

    n_trees = len(split_trees)
    m = max(len(nodes) for nodes, _ in split_trees)
    n_leaves = max(len(leaves) for _, leaves in split_trees)
    feature = np.zeros((n_trees, m), np.int64)
    threshold = np.zeros((n_trees, m), np.float32)
    default_left = np.zeros((n_trees, m), np.bool_)
    missing = np.zeros((n_trees, m), np.int8)
    is_node = np.zeros((n_trees, m), np.bool_)
    paths = np.zeros((n_trees, m, n_leaves), np.float32)
    bias = np.zeros((n_trees, n_leaves), np.float32)
    depth = np.full((n_trees, n_leaves), -1.0, np.float32)
    leaf_value = np.zeros((n_trees, n_leaves), np.float32)
    for t, (nodes, leaves) in enumerate(split_trees):
        for i, node in enumerate(nodes):
            feature[t, i] = int(node["split_feature"])
            threshold[t, i] = float32_at_or_below(float(node["threshold"]))
            default_left[t, i] = bool(node["default_left"])
            missing[t, i] = MISSING_TYPES.index(node["missing_type"])
            is_node[t, i] = True
        for j, (value, path) in enumerate(leaves):
            leaf_value[t, j] = value
            depth[t, j] = len(path)
            for step in path:
                paths[t, abs(step) - 1, j] = 1.0 if step > 0 else -1.0
                bias[t, j] += 0.0 if step > 0 else 1.0
    return TreeTables(
        feature=feature,
        threshold=threshold,
        default_left=default_left,
        missing=missing,
        is_node=is_node,
        paths=paths,
        bias=bias,
        depth=depth,
        leaf_value=leaf_value,
        constant=constant,
        scale=scale,
        sigmoid=sigmoid,
        average_output=average_output,
    )


def _const(name: str, value: npt.ArrayLike, dtype: npt.DTypeLike) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def export_gemm(booster: lightgbm.Booster, n_features: int) -> onnx.ModelProto:
    """The booster's positive-class probability as a graph of standard ONNX operators (opset 17).

    Input ``features`` float32 [N, F]; output ``probability`` float32 [N]; N is dynamic. With T
    trees padded to m internal nodes and l leaves, tree-major so that no [N, T*m] tensor is
    transposed:

    1. ``x0 = Where(|x| <= 1e-35, 0, x)`` transposed to [F, N];
       ``g = Gather(x0, feature, axis=0)`` [T*m, N];
    2. a missing value becomes the node's ``sentinel``, -inf when it defaults left, +inf when it
       defaults right (thresholds are never NaN, so ``-inf <= t`` always holds and ``+inf <= t``
       never does): NaN on NaN-type nodes, 0 (NaN included) on Zero-type nodes; NaN on None-type
       nodes becomes 0;
    3. ``D = Cast(g <= threshold)`` reshaped to [T, m, N] (0/1);
    4. ``hit = (paths^T @ D + bias == depth)`` [T, l, N]: one leaf per tree and row;
    5. ``raw = ReduceSum(hit * leaf_value, axes=[0, 1]) + constant`` [N];
       ``probability = Sigmoid(raw * scale)`` [N].

    The per-tree (batched) MatMul keeps the work at N*T*m*l instead of the N*(T*m)*(T*l) of one
    block-diagonal matrix. Intermediates take about ``N * T * max(m, l) * 4`` bytes each, so score
    large sets in batches.
    """
    tables = read_booster(booster, n_features)
    n_trees, m = tables.feature.shape
    n_leaves = tables.leaf_value.shape[1]
    flat = n_trees * m
    nan_type = (tables.missing == MISSING_TYPES.index("NaN")).reshape(flat)
    zero_type = (tables.missing == MISSING_TYPES.index("Zero")).reshape(flat)
    sentinel = np.where(tables.default_left, -np.inf, np.inf).astype(np.float32).reshape(flat)
    initializers = [
        _const("zero_threshold", ZERO_THRESHOLD, np.float32),
        _const("zero", 0.0, np.float32),
        _const("node_feature", tables.feature.reshape(flat), np.int64),
        _const("node_threshold", tables.threshold.reshape(flat, 1), np.float32),
        _const("node_nan_fill", np.where(nan_type, sentinel, 0.0).reshape(flat, 1), np.float32),
        _const("tree_shape", [n_trees, m, -1], np.int64),
        _const("paths_t", tables.paths.transpose(0, 2, 1), np.float32),
        _const("leaf_bias", tables.bias.reshape(n_trees, n_leaves, 1), np.float32),
        _const("leaf_depth", tables.depth.reshape(n_trees, n_leaves, 1), np.float32),
        _const("leaf_value", tables.leaf_value.reshape(n_trees, n_leaves, 1), np.float32),
        _const("sum_axes", [0, 1], np.int64),
    ]
    node = helper.make_node
    nodes = [
        node("Transpose", [INPUT_NAME], ["x_t"], perm=[1, 0]),
        node("Abs", ["x_t"], ["abs_x"]),
        node("LessOrEqual", ["abs_x", "zero_threshold"], ["is_tiny"]),
        node("Where", ["is_tiny", "zero", "x_t"], ["x0"]),
        node("Gather", ["x0", "node_feature"], ["g"], axis=0),
        node("IsNaN", ["g"], ["g_nan"]),
        node("Where", ["g_nan", "node_nan_fill", "g"], ["v"]),
    ]
    if zero_type.any():
        initializers += [
            _const("node_zero_type", zero_type.reshape(flat, 1), np.bool_),
            _const("node_sentinel", sentinel.reshape(flat, 1), np.float32),
        ]
        nodes += [
            node("Equal", ["v", "zero"], ["v_zero"]),
            node("And", ["v_zero", "node_zero_type"], ["zero_missing"]),
            node("Where", ["zero_missing", "node_sentinel", "v"], ["v_routed"]),
        ]
    nodes += [
        node("LessOrEqual", [nodes[-1].output[0], "node_threshold"], ["go_left"]),
        node("Cast", ["go_left"], ["d_flat"], to=TensorProto.FLOAT),
        node("Reshape", ["d_flat", "tree_shape"], ["d"]),
        node("MatMul", ["paths_t", "d"], ["signed_count"]),
        node("Add", ["signed_count", "leaf_bias"], ["satisfied"]),
        node("Equal", ["satisfied", "leaf_depth"], ["hit_bool"]),
        node("Cast", ["hit_bool"], ["hit"], to=TensorProto.FLOAT),
        node("Mul", ["hit", "leaf_value"], ["contribution"]),
        node("ReduceSum", ["contribution", "sum_axes"], ["tree_sum"], keepdims=0),
    ]
    raw = "tree_sum"
    if tables.constant != 0.0:
        initializers.append(_const("constant", tables.constant, np.float32))
        nodes.append(node("Add", [raw, "constant"], ["raw"]))
        raw = "raw"
    if tables.scale != 1.0:
        initializers.append(_const("scale", tables.scale, np.float32))
        nodes.append(node("Mul", [raw, "scale"], ["logit"]))
        raw = "logit"
    nodes.append(node("Sigmoid", [raw], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes,
        "lightgbm_gemm",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="sepsis-cds training.gemm_onnx",
    )
    # IR version 9 (onnx 1.14) keeps the file readable by every onnxruntime the project allows.
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    foreign = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    if foreign:
        raise RuntimeError(f"GEMM graph must use standard operators only, found {foreign}")
    return model
