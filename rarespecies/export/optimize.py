"""Rewrite tf2onnx's ConvNeXt graph into the forms onnxruntime runs fast, in standard ONNX.

tf2onnx writes a ConvNeXt block in three shapes that onnxruntime cannot fuse:

- Keras' exact GELU as `0.5·x · (1 - erf(-x·(1/√2)))`. onnxruntime fuses `Gelu` only from
  `0.5·x · (1 + erf(x/√2))`; erf being odd, the two are the same numbers.
- LayerNorm over the channels of an NCHW tensor (axis 1: tf2onnx transposes the whole
  network to NCHW for the convolutions), spelt as ~13 element-wise ops. ONNX's
  `LayerNormalization` normalizes trailing axes only, so the rewrite normalizes the NHWC
  tensor (`Transpose`, `LayerNormalization(axis=-1)`, `Transpose` back); the pointwise
  convolutions that follow want NHWC anyway, so the inner transposes cancel.
- Each pointwise convolution (`Dense` on a 4-D tensor, TF's `Tensordot`) as `Reshape` to 2-D,
  `MatMul`, `Reshape` back, with the shapes computed at run time by ~12 shape ops. `MatMul`
  takes the 4-D tensor directly.

Two more rewrites save element-wise passes: the layer scale is folded into the second
pointwise convolution's weights, and the residual sums happen channels-last, so that in
onnxruntime's optimized ConvNeXtBase graph 2 of 36 per-block Transposes remain.

The rules are onnxscript rewriter patterns (onnxscript's own transpose rules then cancel the
transpose pairs). Everything stays in the ai.onnx domain at the model's opset (17), so
onnxruntime-node or OpenCV read the same file; onnxruntime's own fusions (Gelu, BiasGelu,
NCHWc convolutions) happen when a session loads it.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import _basic_rules, _no_op

_CHANNELS_LAST, _CHANNELS_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The numbers of an initializer or Constant output, else None."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        attribute = value.producer().attributes.get("value")
        tensor = attribute.value if attribute is not None else None
    return None if tensor is None else tensor.numpy()


def _per_channel(values: np.ndarray | None, rank: int,
                 channels: int | None) -> np.ndarray | None:
    """`values` as a vector over axis 1 of a tensor, if it broadcasts as one.

    Args:
        values: a constant broadcast against an `[N, C, ...]` tensor (e.g. `[C, 1, 1]`).
        rank: the tensor's rank.
        channels: C, when known.

    Returns:
        float32 `[C]`, or None when the constant varies along another axis.
    """
    if values is None or values.ndim > rank:
        return None
    shape = (1,) * (rank - values.ndim) + values.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
        return None
    vector = values.reshape(-1).astype(np.float32)
    if channels is not None and len(vector) not in (1, channels):
        return None
    if len(vector) == 1 and channels is not None:
        vector = np.full(channels, vector[0], np.float32)
    return vector


def _initializer(op, values: np.ndarray | np.float32, name: str) -> ir.Value:
    """A new float32 initializer in a rule's replacement, under a name unique to the match."""
    return op.initializer(ir.tensor(np.asarray(values, np.float32), name=name))


class ChannelsFirstLayerNorm(pattern.RewriteRuleClassBase):
    """Keras LayerNorm (tf2onnx, NCHW, axis 1) -> Transpose, LayerNormalization, Transpose;
    over the features of a 2-D tensor (the head's LayerNorm, axis 1 too) -> LayerNormalization.

    Keras computes `x·s + (beta - mean·s)` with `s = gamma / sqrt(var + eps)`. `with_beta=False`
    matches the form where tf2onnx folded away a zero beta; `reshaped_mean` the form where a
    transpose of the mean became a `Reshape` (in front of a block's pointwise convolutions).
    """

    def __init__(self, with_beta: bool, reshaped_mean: bool) -> None:
        super().__init__(f"ChannelsFirstLayerNorm{'Beta' if with_beta else ''}"
                         f"{'Reshaped' if reshaped_mean else ''}")
        self._with_beta, self._reshaped_mean = with_beta, reshaped_mean

    def pattern(self, op, x, shape, epsilon, gamma, beta):
        mean = op.ReduceMean(x, axes=[1], keepdims=1)
        centre = op.Reshape(mean, shape) if self._reshaped_mean else mean
        deviation = op.Sub(x, centre)
        variance = op.ReduceMean(op.Mul(deviation, deviation), axes=[1], keepdims=1)
        scale = op.Mul(op.Reciprocal(op.Sqrt(op.Add(variance, epsilon))), gamma)
        shift = op.Mul(op.Neg(mean), scale)
        if self._with_beta:
            shift = op.Add(shift, beta)
        return op.Add(op.Mul(x, scale), shift)

    def check(self, context, x, epsilon, gamma, beta=None, **_) -> pattern.MatchResult:
        """A float NCHW (or [N, C]) input, scalar eps, and gamma (beta) constant per channel."""
        result = pattern.MatchResult()
        if x.dtype != ir.DataType.FLOAT or x.shape is None or x.shape.rank() not in (2, 4):
            return result.fail("input is not a float tensor of rank 2 or 4", x)
        self._rank = x.shape.rank()
        channels = x.shape[1] if isinstance(x.shape[1], int) else None
        eps = _constant(epsilon)
        if eps is None or eps.size != 1:
            return result.fail("epsilon is not a constant scalar", epsilon)
        self._epsilon = float(eps.reshape(-1)[0])
        self._gamma = _per_channel(_constant(gamma), self._rank, channels)
        if self._gamma is None:
            return result.fail("gamma is not a per-channel constant", gamma)
        if self._with_beta:
            self._beta = _per_channel(_constant(beta), self._rank, len(self._gamma))
            if self._beta is None:
                return result.fail("beta is not a per-channel constant", beta)
        else:
            self._beta = np.zeros_like(self._gamma)
        return result

    def rewrite(self, op, x, **_):
        # Named after the input, which only this LayerNorm reads: onnxscript keeps one
        # initializer per name, and equal gamma constants are shared in tf2onnx's graph.
        scale = _initializer(op, self._gamma, f"{x.name}/layernorm_scale")
        bias = _initializer(op, self._beta, f"{x.name}/layernorm_bias")
        if self._rank == 2:  # axis 1 is already the last one
            return op.LayerNormalization(x, scale, bias, axis=-1, epsilon=self._epsilon)
        normalized = op.LayerNormalization(op.Transpose(x, perm=_CHANNELS_LAST), scale, bias,
                                           axis=-1, epsilon=self._epsilon)
        return op.Transpose(normalized, perm=_CHANNELS_FIRST)


class ErfcGelu(pattern.RewriteRuleClassBase):
    """`0.5·x · (1 - erf(-x·c))`, c = 1/√2 (Keras' exact GELU via tf2onnx) -> the form
    onnxruntime's Gelu fusion matches: `(x·0.5) · (erf(x/√2) + 1)`."""

    def pattern(self, op, x):
        half = op.Mul(0.5, x)
        erfc = op.Sub(1.0, op.Erf(op.Mul(op.Neg(x), 1 / math.sqrt(2))))
        return op.Mul(half, erfc)

    def rewrite(self, op, x):
        half = _initializer(op, np.float32(0.5), f"{x.name}/gelu_half")
        sqrt2 = _initializer(op, np.float32(math.sqrt(2)), f"{x.name}/gelu_sqrt2")
        one = _initializer(op, np.float32(1.0), f"{x.name}/gelu_one")
        return op.Mul(op.Mul(x, half), op.Add(op.Erf(op.Div(x, sqrt2)), one))


class TensordotMatMul(pattern.RewriteRuleClassBase):
    """`Reshape(MatMul(Reshape(x, ·), W), ·)` that flattens x to 2-D and restores all of its
    axes but the last -> `MatMul(x, W)` (MatMul broadcasts over the leading axes)."""

    def pattern(self, op, x, flat_shape, weights, out_shape):
        return op.Reshape(op.MatMul(op.Reshape(x, flat_shape), weights), out_shape,
                          _outputs=["out"])

    def check(self, context, x, weights, out, **_) -> pattern.MatchResult:
        """x's last axis is W's rows, and the output keeps x's other (static) axes."""
        result = pattern.MatchResult()
        matrix = _constant(weights)
        if matrix is None or matrix.ndim != 2:
            return result.fail("weights are not a constant matrix", weights)
        if x.shape is None or out.shape is None or x.shape.rank() != out.shape.rank():
            return result.fail("input and output ranks unknown or different", x)
        inner, outer = list(x.shape)[1:], list(out.shape)[1:]
        if inner[-1] != matrix.shape[0] or outer[-1] != matrix.shape[1]:
            return result.fail("the contracted axis is not x's last", x)
        # Equal static middle axes and equal element counts make the leading axis equal too.
        pairs = zip(inner[:-1], outer[:-1], strict=True)
        if not all(isinstance(a, int) and a == b for a, b in pairs):
            return result.fail("the output does not keep x's middle axes", out)
        return result

    def rewrite(self, op, x, weights, **_):
        return op.MatMul(x, weights)


class ScaledMatMul(pattern.RewriteRuleClassBase):
    """`(x·W + b)·s` with constant W, b and a per-column s (ConvNeXt's layer scale after its
    second pointwise convolution) -> `x·(W·s) + b·s`: one element-wise pass fewer per block.
    `with_bias=False` matches the form where tf2onnx folded away a zero bias."""

    def __init__(self, with_bias: bool) -> None:
        super().__init__(f"ScaledMatMul{'Bias' if with_bias else ''}")
        self._with_bias = with_bias

    def pattern(self, op, x, weights, bias, scale):
        product = op.MatMul(x, weights)
        if self._with_bias:
            product = op.Add(product, bias)
        return op.Mul(product, scale)

    def check(self, context, weights, scale, bias=None, **_) -> pattern.MatchResult:
        """W a constant matrix; s (and b) constant, varying along W's columns only."""
        result = pattern.MatchResult()
        matrix, factors = _constant(weights), _constant(scale)
        if matrix is None or matrix.ndim != 2 or factors is None:
            return result.fail("weights or scale not constant", weights)
        self._columns = _per_column(factors, matrix.shape[1])
        if self._columns is None:
            return result.fail("scale is not per column", scale)
        self._weights = matrix.astype(np.float32) * self._columns
        if self._with_bias:
            offsets = _constant(bias)
            offsets = None if offsets is None else _per_column(offsets, matrix.shape[1])
            if offsets is None:
                return result.fail("bias is not a constant per column", bias)
            self._bias = offsets * self._columns
        return result

    def rewrite(self, op, x, weights, **_):
        product = op.MatMul(x, _initializer(op, self._weights, f"{weights.name}/scaled"))
        if self._with_bias:
            product = op.Add(product, _initializer(op, self._bias, f"{weights.name}/scaled_bias"))
        return product


def _per_column(values: np.ndarray, columns: int) -> np.ndarray | None:
    """`values` as a float32 `[columns]` vector if it broadcasts along the last axis only."""
    if values.size not in (1, columns) or (values.ndim and values.shape[-1] != values.size):
        return None
    return np.broadcast_to(values.reshape(-1), (columns,)).astype(np.float32)


class ChannelsLastResidual(pattern.RewriteRuleClassBase):
    """`r + Transpose(y → NCHW)` -> `Transpose((Transpose(r → NHWC) + y) → NCHW)`.

    ConvNeXt's residual sum happens in tf2onnx's NCHW, its branch ends in NHWC: one transpose
    per block. Adding in NHWC instead makes the next block's transpose of the sum cancel
    (`TransposePair`), so the residual stream stays channels-last; onnxruntime folds the
    remaining transposes in front of each depthwise convolution into its NCHWc reorders.
    """

    def pattern(self, op, residual, branch):
        return op.Add(residual, op.Transpose(branch, perm=_CHANNELS_FIRST))

    def rewrite(self, op, residual, branch):
        total = op.Add(op.Transpose(residual, perm=_CHANNELS_LAST), branch)
        return op.Transpose(total, perm=_CHANNELS_FIRST)


class TransposePair(pattern.RewriteRuleClassBase):
    """`Transpose(Transpose(x → NCHW) → NHWC)` -> `x`, even when the inner transpose has other
    readers (they keep it); onnxscript's own rule only removes a pair that nothing else reads.
    """

    def __init__(self) -> None:
        super().__init__("TransposePair", remove_nodes=False)

    def pattern(self, op, x):
        return op.Transpose(op.Transpose(x, perm=_CHANNELS_FIRST), perm=_CHANNELS_LAST)

    def rewrite(self, op, x):
        return op.Identity(x)


RULES = pattern.RewriteRuleSet([
    *(ChannelsFirstLayerNorm.rule(with_beta=beta, reshaped_mean=reshaped)
      for beta in (True, False) for reshaped in (True, False)),
    ErfcGelu.rule(),
    TensordotMatMul.rule(),
    ScaledMatMul.rule(with_bias=True),
    ScaledMatMul.rule(with_bias=False),
    ChannelsLastResidual.rule(),
    TransposePair.rule(),
    *_basic_rules.basic_optimization_rules().rules,
    *_no_op.rules,
])


_PASSES = 4
_CLEAN_UP = ir.passes.Sequential(common_passes.IdentityEliminationPass(),
                                 common_passes.RemoveUnusedNodesPass(),
                                 common_passes.RemoveUnusedOpsetsPass())


def optimize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Apply the ConvNeXt rewrites (`RULES`) and drop the nodes they leave unused.

    Args:
        proto: a tf2onnx model (its opset and metadata are kept); its value_info and any
            missing output shape are filled in by shape inference, the rest is left as it was.

    Returns:
        A new model of ai.onnx ops; its value_info is dropped (shapes changed).
    """
    # Shapes (with the run-time shape computations propagated) let the rules check ranks.
    del proto.graph.value_info[:]
    inferred = {value.name: value for value in _inferred_shapes(proto)}
    for output in proto.graph.output:
        # onnx_ir reads a graph output's shape from its declaration only: fill a missing one.
        if not output.type.tensor_type.HasField("shape") and output.name in inferred:
            output.type.CopyFrom(inferred.pop(output.name).type)
    outputs = {output.name for output in proto.graph.output}
    proto.graph.value_info.extend(v for name, v in inferred.items() if name not in outputs)
    model = ir.serde.deserialize_model(proto)
    # A second pass cancels the transpose pairs that the first one created: a pair cancels
    # only once the shape ops that read the middle tensor are gone (TensordotMatMul).
    for _ in range(_PASSES):
        if not RULES.apply_to_model(model):
            break
    optimized = ir.serde.serialize_model(_CLEAN_UP(model).model)
    del optimized.graph.value_info[:]
    return optimized


def _inferred_shapes(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """onnx's shape inference on a copy without the weights' numbers (only their shapes count;
    ConvNeXtBase's 350 MB would be copied twice more), small shape constants kept."""
    skeleton = onnx.ModelProto(ir_version=proto.ir_version, opset_import=proto.opset_import)
    graph = skeleton.graph
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(proto.graph.output)
    for tensor in proto.graph.initializer:
        if len(tensor.raw_data) > _SMALL_BYTES:  # an input of the same type and shape
            graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            graph.initializer.append(tensor)
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True).graph
    return [*inferred.value_info, *inferred.output]


_SMALL_BYTES = 1024


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph holds (for reports and tests)."""
    return dict(Counter(node.op_type for node in proto.graph.node))
