"""Other libraries' softmax, timed beside softgen's kernels: NumPy, PyTorch, ONNX Runtime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import UsageError
from . import deps
from .parse import _items

# -- peers ---------------------------------------------------------------------------------------------

PEERS = ("numpy", "torch", "onnxruntime")
PEER_OPS = ("softmax",)


def numpy_softmax(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The straightforward NumPy softmax, writing into a preallocated ``out``."""
    m = x.max(-1, keepdims=True)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    s = out.sum(-1, keepdims=True)
    np.divide(out, s, out=out)
    return out


@dataclass
class Peer:
    """Another library's softmax: ``variant(x, y)`` is a timing variant writing softmax(x) to y."""

    name: str
    version: str
    bytes_per_element: int
    traffic: str
    variant: Callable[[np.ndarray, np.ndarray], tuple]
    threads: str


def _numpy_peer() -> Peer:
    return Peer("numpy", np.__version__, 32, "5R + 3W (assumed: max, x-m, exp, sum, divide)",
                lambda x, y: ("f(x, y)", {"f": numpy_softmax, "x": x, "y": y}), "1 (NumPy ufuncs)")


def _torch_peer() -> Peer:
    torch = deps._import("torch")
    torch.set_num_threads(1)

    def variant(x, y):
        return ("f(xt, -1, out=yt)", {"f": torch.softmax, "xt": torch.from_numpy(x), "yt": torch.from_numpy(y)})
    return Peer("torch", torch.__version__, 24, "4R + 2W (assumed: ATen _vec_softmax_lastdim)", variant,
                f"{torch.get_num_threads()} (torch.set_num_threads(1))")


ONNX_OPSET = 13     # Softmax-13: normalises along one axis (here -1); earlier opsets flatten the trailing axes


def onnx_softmax_model(opset: int = ONNX_OPSET) -> bytes:
    """A one-node ONNX model ``y = Softmax(x, axis=-1)`` over float [rows, n] (needs ``onnx``)."""
    onnx = deps._import("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    graph = helper.make_graph([node], "softgen_bench_softmax",
                              [helper.make_tensor_value_info("x", tp.FLOAT, ["rows", "n"])],
                              [helper.make_tensor_value_info("y", tp.FLOAT, ["rows", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8     # opset 13 needs IR >= 7; 8 loads in every onnxruntime since 1.10
    return model.SerializeToString()


def _ort_peer() -> Peer:
    ort = deps._import("onnxruntime")
    try:
        model = onnx_softmax_model()
    except ImportError as e:
        raise ImportError(f"onnx is not installed, which builds the one-node Softmax model ({e})") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def variant(x, y):
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        io = sess.io_binding()
        io.bind_input("x", "cpu", 0, np.float32, list(x2.shape), x2.ctypes.data)
        io.bind_output("y", "cpu", 0, np.float32, list(y2.shape), y2.ctypes.data)
        return ("s.run_with_iobinding(io)", {"s": sess, "io": io, "keep": (x2, y2)})
    return Peer("onnxruntime", ort.__version__, 24, "4R + 2W (assumed: MLAS max, exp+sum, scale)", variant,
                f"1 (intra_op_num_threads=1; Softmax opset {ONNX_OPSET}, axis=-1; I/O binding of x and a "
                "preallocated y)")


_PEER_LOADERS = {"numpy": _numpy_peer, "torch": _torch_peer, "onnxruntime": _ort_peer}
_INSTALL = {"torch": "pip install torch", "onnxruntime": "pip install onnxruntime onnx"}


def parse_against(text: str) -> list[str]:
    """``--against numpy,torch,onnxruntime`` (``none``: no peers)."""
    items = [t.lower() for t in _items(text)]
    if items == ["none"]:
        return []
    bad = [t for t in items if t not in PEERS]
    if bad or not items:
        raise UsageError(f"--against: unknown peer(s) {', '.join(map(repr, bad)) or '(empty)'}; "
                         f"choose from {','.join(PEERS)} (comma-separated) or none")
    return list(dict.fromkeys(items))


def load_peers(names: Sequence[str], op: str = "softmax") -> tuple[list[Peer], dict[str, str]]:
    """The peers among ``names`` that can run here, and ``{name: why}`` for those skipped."""
    peers, skipped = [], {}
    for name in names:
        if op not in PEER_OPS:
            skipped[name] = f"the peers implement {', '.join(PEER_OPS)} only, not {op}"
            continue
        try:
            peer = _PEER_LOADERS[name]()
            verify_peer(peer)
            peers.append(peer)
        except ImportError as e:
            why = str(e) or f"{name} is not importable"
            skipped[name] = f"not installed ({why}; {_INSTALL.get(name, 'pip install ' + name)})"
        except PeerMismatch as e:
            skipped[name] = f"wrong results: {e}"
        except Exception as e:   # a broken install: skip it, saying why
            skipped[name] = f"failed to set up: {type(e).__name__}: {e}"
    return peers, skipped


PEER_TOL = 1e-5     # max |y - softmax64(x)| / max softmax64(x), float32 arithmetic has ~1e-7


class PeerMismatch(Exception):
    """A peer's output differs from the float64 softmax (it is then skipped, not timed)."""


def _softmax64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def verify_peer(peer: Peer, seed: int = 0) -> None:
    """Run ``peer`` through its timing variant (the path that is timed: preallocated ``y``, every
    element written) on a single row and a batch whose rows include large values (an unshifted exp
    would overflow), and raise ``PeerMismatch`` unless it matches the float64 softmax."""
    rng = np.random.default_rng(seed)
    for shape in ((1000,), (7, 130)):
        x = rng.standard_normal(shape, dtype=np.float32)
        x[..., ::17] *= 40.0
        x.reshape(-1, shape[-1])[-1] += 200.0
        y = np.full_like(x, np.nan)
        v = peer.variant(x, y)
        v() if callable(v) else eval(v[0], dict(v[1]))
        err = max_rel_err(y, _softmax64(x))
        if not err <= PEER_TOL:
            raise PeerMismatch(f"{peer.name} on a {'x'.join(map(str, shape))} array: max rel err {err:.2e} "
                               f"(> {PEER_TOL:.0e}) against the float64 softmax")


def max_rel_err(y: np.ndarray, ref: np.ndarray, chunk: int = 1 << 20) -> float:
    """max |y - ref| / max |ref| over the array, chunked (no full-size temporaries); NaN if y has one."""
    a, b = y.reshape(-1), ref.reshape(-1)
    err = scale = 0.0
    for i in range(0, a.size, chunk):
        d = np.abs(a[i:i + chunk] - b[i:i + chunk])
        if np.isnan(d).any():
            return float("nan")
        err = max(err, float(d.max()) if d.size else 0.0)
        scale = max(scale, float(np.abs(b[i:i + chunk]).max()))
    return err / scale if scale else err
