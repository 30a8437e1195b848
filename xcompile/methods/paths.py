"""Methods that average gradients over many inputs: Integrated Gradients and SmoothGrad.

All steps/samples run inside ONE graph call: the batch is expanded in-graph ([N] -> [N*m]) and a copy
of the forward graph (sharing every weight) runs on it. `chunk` bounds memory: the m points are
processed `chunk` at a time by successive copies, which onnxruntime executes one after the other,
reusing the freed activation memory."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..backward.builder import Builder
from ..backward.engine import float32_view
from ..errors import XCompileError
from ..graph import ForwardGraph
from ..options import check_memory, in_range, non_negative_int, positive_int
from .base import Built, Method, Param, as_float, as_int, make_seed, register, resolve_target
from .clone import clone_forward
from .tokens import baseline_embedding, no_float_baseline


def _repeat_rows(b: Builder, t: str, m: int, rank: int) -> str:
    """[N, ...] -> [N*m, ...], each row repeated m times consecutively."""
    shape = [1, m] + [1] * (rank - 1)
    e = b.op("Expand", [b.unsqueeze(t, [1]), b.i64(shape)], "repeat")
    return e


NODE_BYTES = 2048  # what one emitted node costs while the graph is built and serialized (protobuf + Python)


def _elems(shape) -> float:
    return float(np.prod([d for d in shape[1:] if isinstance(d, int) and d > 0], dtype=np.float64)) if shape else 0.0


def row_activations(g: ForwardGraph) -> float:
    """Elements of every forward tensor for ONE input row (the batch dimension left out)."""
    return sum(_elems(s) for s in g.shapes.values() if s)


class _PathMethod(Method):
    """Shared machinery: subclasses give the points (as [N, k, ...] tensors) per chunk."""
    count_name = "steps"

    def memory_estimate(self, g: ForwardGraph, m: int, chunk: int) -> float:
        """Bytes for ONE input row, before anything is built: the forward + backward activations of the `chunk`
        points run at once (float32), the per-point constants stored in the graph (alphas, SmoothGrad's noise
        table), and the ceil(m / chunk) copies of the forward + backward graph."""
        activations = row_activations(g)
        sample = _elems(g.shape(g.data_input))
        copies = -(-m // chunk)
        return 4.0 * 2 * activations * chunk + 8.0 * m * (1 + sample) + NODE_BYTES * 3 * len(g.nodes) * copies

    def points(self, g, b, chunk_index, k) -> str:
        raise NotImplementedError

    def build(self, g: ForwardGraph, b: Builder, where: str) -> Built:
        m, chunk = self.count(), self.values["chunk"] or self.count()
        if chunk <= 0 or m <= 0:
            raise XCompileError(f"option chunk/steps must be positive for method {self.name!r}")
        chunk = min(chunk, m)
        check_memory(self.memory_estimate(g, m, chunk), f"{where}: {self.name} with {self.count_name}={m}"
                     + (f", chunk={self.values['chunk']}" if self.values["chunk"] else ""))
        sample = [int(d) for d in g.shape(g.data_input)[1:]]
        target = resolve_target(b, g, g.explained)
        n_classes = g.shape(g.explained)[1]
        total = []
        for c, start in enumerate(range(0, m, chunk)):
            k = min(chunk, m - start)
            with b.scope(f"chunk{c}"):
                pts = self.points(g, b, start, k)  # [N, k, ...]
                flat = b.reshape(pts, [-1] + sample, "points")
                if float32_view(b, g, g.data_input) != g.data_input:  # float16 input: the forward clone reads float16
                    flat = b.cast(flat, TensorProto.FLOAT16, "points_float16")
                rename = clone_forward(g, b, flat, b.fresh("fwd"), repeat=k)
                t = b.reshape(_repeat_rows(b, target, k, 1), [-1], "targets")
                seed = make_seed(b, n_classes, rename(g.explained), t, "one")
                grads = self.engine(g, b, rename=rename).run(seed, where)
                gr = grads.get(g.data_input) or b.zeros_like(flat)
                gr = b.reshape(gr, [-1, k] + sample, "per_row")
                total.append(b.reduce("ReduceSum", gr, [1], keepdims=0, hint="chunk_sum"))
        mean = b.mul(b.sum(total, "sum_over_chunks"), b.f32(1.0 / m), "mean_gradient")
        return Built(self.finish(g, b, mean))


@register
class IntegratedGradients(_PathMethod):
    name = "integrated_gradients"
    summary = "(x - x') * mean_k dF/dx(x' + k/m (x - x')), right Riemann sum"
    params = {
        "steps": Param(32, "number of Riemann steps m (a positive integer)", positive_int),
        "baseline": Param(0.0, "baseline value x' (a number)", as_float),
        "chunk": Param(0, "steps evaluated at once (0: all) -- bounds memory", non_negative_int),
    }

    def count(self):
        return self.values["steps"]

    def points(self, g, b, start, k):
        m = self.values["steps"]
        rank = len(g.shape(g.data_input))
        x, base = float32_view(b, g, g.data_input), self.baseline(g, b)
        alphas = (np.arange(start, start + k, dtype=np.float64) + 1) / m
        a = b.const(alphas.reshape([1, k] + [1] * (rank - 1)).astype(np.float32), hint="alphas")
        diff = b.unsqueeze(b.sub(x, base, "x_minus_baseline"), [1])
        return b.add(b.mul(diff, a), base, "path_points")

    def finish(self, g, b, r):
        return b.mul(b.sub(float32_view(b, g, g.data_input), self.baseline(g, b)), r, "integrated_gradients")

    def baseline(self, g, b):
        """x': the number given, or for token ids the embedding of baseline_token (zero vector when unset)."""
        if g.token is not None:
            return b.const(baseline_embedding(g), hint="baseline_embedding")
        return b.f32(self.values["baseline"])

    def prepare(self, g, where):
        no_float_baseline(self, g, where)


@register
class SmoothGrad(_PathMethod):
    name = "smoothgrad"
    summary = "mean gradient at x + N(0, sigma^2), sigma = noise_level * (max x - min x) per sample"
    params = {
        "samples": Param(20, "number of noisy samples (a positive integer)", positive_int),
        "noise_level": Param(0.1, "noise level relative to the input range (a number in [0, 1e6])",
                             in_range(as_float, 0, 1e6)),  # larger ones overflow float32: NaN relevance
        "seed": Param(0, "random seed of the in-graph sampler (an integer in [0, 2^31))", in_range(as_int, 0, 2**31 - 1)),
        "chunk": Param(0, "samples evaluated at once (0: all) -- bounds memory", non_negative_int),
    }

    count_name = "samples"
    token_relevance = "norm"  # the L2 norm of the mean gradient per token

    def count(self):
        return self.values["samples"]

    def points(self, g, b, start, k):
        x = float32_view(b, g, g.data_input)
        rank = len(g.shape(g.data_input))
        axes = list(range(1, rank))
        with b.scope("sigma"):
            span = b.sub(b.reduce("ReduceMax", x, axes, 1), b.reduce("ReduceMin", x, axes, 1))
            sigma = b.unsqueeze(b.mul(span, b.f32(self.values["noise_level"])), [1])
        base = _repeat_rows(b, x, k, rank)  # [N, k, ...]
        sample_shape = list(g.shape(g.data_input))[1:]
        if all(isinstance(d, int) and d > 0 for d in sample_shape):
            # Why a stored table and not RandomNormalLike: onnxruntime's sampler advances its state on every
            # call, so the same input would get a different explanation each time. A seeded table
            # [1, samples, ...] (shared by the rows of a batch) makes every call, session and device agree
            # and keeps a row's explanation independent of the rest of its batch.
            rng = np.random.default_rng(self.values["seed"])
            table = rng.standard_normal((1, self.count(), *sample_shape)).astype(np.float32)
            noise = b.const(table[:, start:start + k], hint="smoothgrad_noise")
        else:  # dynamic sample shape: in-graph sampler (seeded, but its state advances between calls)
            noise = b.op("RandomNormalLike", [base], "noise", dtype=1, mean=0.0, scale=1.0,
                         seed=float(self.values["seed"] * 1000 + start))
        return b.add(base, b.mul(noise, sigma), "noisy_points")
