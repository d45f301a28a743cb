"""``softgen bench`` (softgen/benchmark.py): the generated copy kernel, the peers and their
"not installed" paths, the table, the JSON, the plot's missing-dependency error, the CLI's errors.
Sizes are small and the time budget tiny: these tests check the machinery, not the numbers."""
from __future__ import annotations

import importlib
import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import softgen
from softgen import benchmark as B, cli
from softgen.errors import UsageError
from softgen.targets import get_target

RUNNABLE = [t["name"] for t in softgen.targets() if t["runnable"]]
FAST = dict(min_time=0.001, budget=0.0, min_rounds=2, max_rounds=2, warmup=0, progress=False)
FAST_CLI = ["--min-time", "0.001", "--budget", "0", "--rounds", "2", "--quiet"]
TABLE_HEADERS = ["size", "fits", "variant / peer", "ns/elem", "GB/s", "of copy", "vs best peer", "noise"]


@pytest.fixture(autouse=True)
def _restore_thread_env(monkeypatch):
    """``softgen bench`` sets the thread variables of single_threaded(); undo that after each test."""
    for v in B.THREAD_VARS:
        monkeypatch.setenv(v, "1")


def _missing(*names):
    """An ``_import`` for which ``names`` (and their submodules) are not installed."""
    real = B.deps._import

    def imp(name):
        if name.split(".")[0] in names:
            raise ImportError(f"No module named {name!r}")
        return real(name)
    return imp


# -- the streaming-copy kernel ------------------------------------------------------------------------

@pytest.mark.parametrize("target", RUNNABLE)
def test_copy_kernel_copies_at_odd_sizes_and_offsets(target):
    ck = B.CopyKernel(target)
    rng = np.random.default_rng(1)
    for n in (0, 1, 3, 7, 15, 16, 17, 31, 33, 63, 65, 127, 129, 1000, 4099, 65537):
        for off in (0, 1, 3):               # y not aligned to a vector or a cache line
            x = rng.standard_normal(n + 5, dtype=np.float32)[2:2 + n]
            ybuf = np.full(n + 8, -7.0, np.float32)
            y = ybuf[off:off + n]
            for stream, threads in ((False, 1), (True, 1), (False, 2), (True, 3)):   # 2, 3: ranges on the pool
                y[:] = 0
                ck(x, y, stream, threads)
                np.testing.assert_array_equal(y, x)
                assert (ybuf[:off] == -7).all() and (ybuf[off + n:] == -7).all(), "wrote outside y"


def test_copy_kernel_repetitions_and_checks():
    ck = B.CopyKernel("host")
    assert B.CopyKernel.reps(1) == 1 << 14 and B.CopyKernel.reps(1 << 20) == 1
    x = np.arange(10, dtype=np.float32)
    y = np.zeros(10, np.float32)
    stmt, g = ck.variant(x, y, True)
    eval(stmt, g)
    np.testing.assert_array_equal(y, x)
    y[:] = 0
    stmt, g = ck.variant(x, y, True, threads=2)   # the 2-thread bound of bench/threads.py
    assert "t)" in stmt
    eval(stmt, g)
    np.testing.assert_array_equal(y, x)
    with pytest.raises(UsageError, match="threads"):
        ck(x, y, threads=0)
    with pytest.raises(UsageError, match="float32"):
        ck(x.astype(np.float64), y)
    with pytest.raises(UsageError, match="elements"):
        ck(x, np.zeros(11, np.float32))
    with pytest.raises(UsageError, match="C-contiguous"):
        ck(np.zeros(20, np.float32)[::2], y)
    if "avx512" in RUNNABLE or "avx2" in RUNNABLE:
        assert ck.streams, "x86 vector targets have non-temporal stores"
    assert not B.CopyKernel("scalar").streams


# -- parsing ---------------------------------------------------------------------------------------------

def test_single_threaded_caps_softgen_s_own_auto_threads(monkeypatch):
    """The report says "1 thread": softgen's plain entry (auto threads) must not use the pool."""
    monkeypatch.delenv("SOFTGEN_NUM_THREADS", raising=False)
    B.single_threaded()
    assert os.environ["SOFTGEN_NUM_THREADS"] == "1"


def test_parse_sizes_and_shapes():
    assert B.parse_sizes("1K,64K, 1M 16M,1000") == [(1, 1024), (1, 65536), (1, 1 << 20), (1, 1 << 24), (1, 1000)]
    assert B.parse_shapes("4096x512,64x32K") == [(4096, 512), (64, 32768)]
    assert B.parse_against("numpy,torch") == ["numpy", "torch"] and B.parse_against("none") == []
    for bad in ("", "1Q", "-3", "0", "1.5", "K", "4x5"):
        with pytest.raises(UsageError, match="--sizes.*1K,64K,1M,16M"):
            B.parse_sizes(bad)
    for bad in ("", "512", "4096x", "x512", "4096x512x2", "0x5", "ax5"):
        with pytest.raises(UsageError, match="--shapes.*ROWSxN"):
            B.parse_shapes(bad)
    for bad in ("", "tensorflow", "numpy,jax"):
        with pytest.raises(UsageError, match="--against.*numpy,torch,onnxruntime"):
            B.parse_against(bad)


# -- peers -------------------------------------------------------------------------------------------------

def test_missing_peers_are_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(B.deps, "_import", _missing("torch", "onnxruntime"))
    peers, skipped = B.load_peers(["numpy", "torch", "onnxruntime"])
    assert [p.name for p in peers] == ["numpy"]
    assert set(skipped) == {"torch", "onnxruntime"}
    assert "not installed" in skipped["torch"] and "pip install torch" in skipped["torch"]
    assert "not installed" in skipped["onnxruntime"]


def test_onnxruntime_without_onnx_is_skipped(monkeypatch):
    """onnxruntime importable but not onnx (which builds the one-node model): skipped, saying so."""
    real = B.deps._import

    def imp(name):
        if name == "onnxruntime":
            return object()                  # stands for an installed onnxruntime
        if name == "onnx":
            raise ImportError("No module named 'onnx'")
        return real(name)
    monkeypatch.setattr(B.deps, "_import", imp)
    peers, skipped = B.load_peers(["onnxruntime"])
    assert peers == [] and "onnx is not installed" in skipped["onnxruntime"]


def test_peers_only_for_softmax():
    peers, skipped = B.load_peers(["numpy"], op="log_softmax")
    assert peers == [] and "softmax only" in skipped["numpy"]


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
@pytest.mark.parametrize("shape", [(100,), (3, 100)])
def test_installed_peer_matches_numpy(name, shape):
    """Single rows and batches, through the timed path (preallocated y; ORT: I/O binding)."""
    peers, skipped = B.load_peers([name])
    if not peers:
        pytest.skip(f"{name}: {skipped[name]}")
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    y = np.zeros_like(x)
    stmt, g = peers[0].variant(x, y)
    eval(stmt, dict(g))
    np.testing.assert_allclose(y, B.numpy_softmax(x, np.empty_like(x)), rtol=1e-5, atol=1e-7)


def test_onnxruntime_peer_is_one_thread_opset_13_io_binding():
    peers, skipped = B.load_peers(["onnxruntime"])
    if not peers:
        pytest.skip(f"onnxruntime: {skipped['onnxruntime']}")
    assert B.ONNX_OPSET == 13 and "opset 13" in peers[0].threads and "I/O binding" in peers[0].threads
    assert peers[0].threads.startswith("1 ")


@pytest.mark.parametrize("bug", ["unshifted", "no-write", "wrong-axis"])
def test_a_peer_with_wrong_results_is_skipped_not_timed(monkeypatch, bug):
    """load_peers checks each peer against the float64 softmax on a single row and a batch with
    large values before it is timed."""
    def broken(x, out):
        if bug == "unshifted":                        # exp overflows on the large values
            with np.errstate(over="ignore", invalid="ignore"):
                e = np.exp(x)
                np.divide(e, e.sum(-1, keepdims=True), out=out)
        elif bug == "wrong-axis":                     # normalises columns: right only for one row
            m = x.max(0, keepdims=True) if x.ndim > 1 else x.max()
            e = np.exp(x - m)
            np.divide(e, e.sum(0, keepdims=True) if x.ndim > 1 else e.sum(), out=out)
        return out                                    # "no-write": y keeps its NaNs
    fake = B.Peer("numpy", "0", 32, "-", lambda x, y: ("f(x, y)", {"f": broken, "x": x, "y": y}), "1")
    monkeypatch.setitem(B.peers._PEER_LOADERS, "numpy", lambda: fake)
    peers, skipped = B.load_peers(["numpy"])
    assert peers == [] and skipped["numpy"].startswith("wrong results: numpy on a ")


# -- the run, the table, the JSON -------------------------------------------------------------------------

def test_run_rows_and_table(monkeypatch):
    monkeypatch.setattr(B.deps, "_import", _missing("torch", "onnxruntime"))
    cfg = B.BenchConfig(shapes=[(1, 1000), (4, 257)], against=["numpy", "torch"], all=True, **FAST)
    res = B.run(cfg)
    algs = softgen.passes.applicable_algorithms(softgen.ops.build_program("softmax"))
    names = {r["variant"] for r in res["rows"]}
    auto = softgen.compile("softmax")
    if auto.dispatcher:   # timed as itself, beside every algorithm
        assert names == {"softgen auto"} | {f"softgen {a}" for a in algs} | {"numpy", "copy"}
        for r in res["rows"]:
            if r["variant"] == "softgen auto":   # its traffic at each size is the chosen variant's
                entry = next(e for e in auto.dispatch.entries if e.n_min <= r["n"] <= (e.n_max or r["n"]))
                assert r["algorithm"] == entry.algorithm and r["bytes_per_element"] > 0
    else:
        assert names == {f"softgen {a} (auto)" if a == auto.algorithm else f"softgen {a}" for a in algs} \
            | {"numpy", "copy"}
    assert [r["size"] for r in res["rows"]] == ["1000"] * len(names) + ["4x257"] * len(names)
    for r in res["rows"]:
        assert r["ns_per_element"] > 0 and r["gbps"] > 0 and r["noise"] >= 0
        assert r["copy_fraction"] == pytest.approx(r["gbps"] / r["copy_gbps"])
        if r["kind"] == "copy":
            assert r["vs_best_peer"] is None and r["copies_per_call"] == B.CopyKernel.reps(r["elements"])
        else:
            assert r["vs_best_peer"] == pytest.approx(
                next(p["seconds"] for p in res["rows"] if p["variant"] == "numpy" and p["size"] == r["size"])
                / r["seconds"])
            assert r["max_rel_err"] < 1e-5
    assert res["peers"]["skipped"].keys() == {"torch"}
    text = B.format_report(res)
    header = next(line for line in text.splitlines() if line.startswith("size"))
    assert header.split("  ") and all(h in header for h in TABLE_HEADERS)
    assert "peer torch skipped: not installed" in text
    assert sum(line.startswith("1000 ") for line in text.splitlines()) == len(names)


def test_dram_sizes_rotate_buffers_beyond_the_llc(monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_SIZES", "L1d=4K,L2=16K,L3=64K")
    cfg = B.BenchConfig(shapes=[(1, 1024), (1, 12 * 1024)], against=["numpy"], **FAST)
    rows = B.run(cfg)["rows"]
    small = [r for r in rows if r["n"] == 1024]
    big = [r for r in rows if r["n"] == 12 * 1024]
    assert {r["level"] for r in small} == {"L2"} and {r["buffer_pairs"] for r in small} == {1}
    assert {r["level"] for r in big} == {"DRAM"}
    assert {r["buffer_pairs"] for r in big} == {2}            # 2 x 96 KiB >= 2 x 64 KiB
    if B.CopyKernel("host").streams:
        assert "copy (non-temporal)" in {r["variant"] for r in big}
        assert "copy (non-temporal)" not in {r["variant"] for r in small}


def test_targets_given_twice_are_timed_once_and_json_is_strict():
    host = softgen.host_target()
    res = B.run(B.BenchConfig(shapes=[(1, 64)], against=[], targets=["host", host], copy=False, **FAST))
    auto = softgen.compile("softmax")
    assert [r["variant"] for r in res["rows"]] == \
        ["softgen auto" if auto.dispatcher else f"softgen {auto.algorithm} (auto)"]
    res["rows"][0]["noise"] = float("nan")
    assert json.loads(B.to_json(res))["rows"][0]["noise"] is None


def test_progress_bar_without_tqdm(monkeypatch):
    monkeypatch.setattr(B.deps, "_import", _missing("tqdm"))
    out = io.StringIO()
    bar = B.Progress(3, desc="bench", stream=out)
    for s in ("1K", "1M", "16M"):
        bar.update(s)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "3/3" in lines[-1] and all("ETA" in line for line in lines)


# -- the command line ---------------------------------------------------------------------------------------

def test_cli_bench_json_schema(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(B.deps, "_import", _missing("onnxruntime"))
    out = tmp_path / "b.json"
    assert cli.main(["bench", "--sizes", "1K", "--shapes", "8x100", "--against", "numpy,onnxruntime",
                     "--json", str(out), *FAST_CLI]) == 0
    text = capsys.readouterr().out
    assert all(h in text for h in TABLE_HEADERS) and "onnxruntime skipped" in text
    d = json.loads(out.read_text())
    assert d["softgen"] == softgen.__version__ and d["op"] == "softmax"
    assert {"describe", "identity", "fingerprint", "caches", "info"} <= d["machine"].keys()
    assert d["machine"]["identity"]["features"] and d["machine"]["caches"]["source"]
    assert d["config"]["shapes"] == [[1, 1024], [8, 100]]
    assert d["peers"]["used"].keys() == {"numpy"} and "onnxruntime" in d["peers"]["skipped"]
    assert [v["auto"] for v in d["variants"]] == [True]
    keys = {"size", "rows", "n", "elements", "level", "variant", "kind", "seconds", "ns_per_element", "gbps",
            "bytes_per_element", "copy_gbps", "copy_fraction", "vs_best_peer", "noise", "rounds"}
    assert d["rows"] and all(keys <= r.keys() for r in d["rows"])
    assert {r["kind"] for r in d["rows"]} == {"softgen", "peer", "copy"}


def test_cli_plot_without_matplotlib_fails_before_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(B.deps, "_import", _missing("matplotlib"))
    monkeypatch.setattr(B, "run", lambda *a, **k: pytest.fail("measured before checking --plot"))
    assert cli.main(["bench", "--sizes", "1K", "--plot", str(tmp_path / "p.png"), *FAST_CLI]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "pip install" in err
    assert not (tmp_path / "p.png").exists()


def test_plot_draws_single_rows_as_lines_and_batches_as_points(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)          # keep the figure to look at it

    def row(variant, kind, rows, n, ns, auto=False):
        return dict(variant=variant, kind=kind, rows=rows, n=n, elements=rows * n, size=B.size_label(rows, n),
                    ns_per_element=ns, auto=auto, bytes_per_element=12, copy_gbps=50.0)
    rows = [row("softgen auto", "softgen", 1, 1024, 0.5, True), row("softgen auto", "softgen", 1, 4096, 0.4, True),
            row("softgen auto", "softgen", 64, 512, 0.45, True), row("onnxruntime", "peer", 1, 1024, 0.9),
            row("onnxruntime", "peer", 1, 4096, 0.8), row("onnxruntime", "peer", 64, 512, 0.7)]
    res = {"rows": rows, "softgen": "x", "op": "softmax", "machine": {
        "caches": {"L1d": 32768, "L2": 1 << 20, "L3": 32 << 20}, "identity": {"arch": "x86_64"}, "fingerprint": "f"}}
    p = B.plot(res, tmp_path / "p.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = figs[0].axes
    lines = [(tuple(ln.get_xdata()), ln.get_linestyle()) for ln in ax.lines]
    assert ((1024, 4096), "-") in lines and ((1024, 4096), "--") in lines       # single rows: lines
    assert ((64 * 512,), "None") in lines                                     # batches: points, no line
    assert not any(64 * 512 in xs and len(xs) > 1 for xs, _ in lines)          # never joined to the rows
    assert sum(1 for xs, ls in lines if xs == (64 * 512,) and ls == "None") == 3  # auto, ORT, roofline


def test_cli_plot_with_matplotlib(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    p = tmp_path / "p.png"
    assert cli.main(["bench", "--sizes", "1K,4K", "--against", "numpy", "--plot", str(p), *FAST_CLI]) == 0
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, msg", [
    (["--sizes", "1Q"], "1K,64K,1M,16M"),
    (["--sizes", "4096x512"], "use --shapes"),
    (["--shapes", "512"], "ROWSxN"),
    (["--against", "numpy,tensorflow"], "numpy,torch,onnxruntime"),
    (["--op", "sinkhorn"], "row ops"),
    (["--op", "lssa"], "row ops"),
    (["--op", "nope"], "unknown op"),
    (["--target", "sse9"], "unknown target"),
    (["--backend", "nope"], "unknown backend"),
    (["--rounds", "x"], "MIN-MAX"),
    (["--rounds", "9-3"], "min_rounds <= max_rounds"),
    (["--json", "/nonexistent-dir/x.json"], "does not exist"),
])
def test_cli_bench_usage_errors(args, msg, capsys, monkeypatch):
    monkeypatch.setattr(B, "run", lambda *a, **k: pytest.fail("measured despite a usage error"))
    assert cli.main(["bench", *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("softgen: error:") and msg in err[0], err


def test_cli_bench_target_that_cannot_run(capsys, monkeypatch):
    missing = [t["name"] for t in softgen.targets() if not t["runnable"]]
    if not missing:
        pytest.skip("every target runs here")
    monkeypatch.setattr(B, "run", lambda *a, **k: pytest.fail("measured a target that cannot run"))
    assert cli.main(["bench", "--target", missing[0], "--quiet"]) == 2
    assert "cannot run on this CPU" in capsys.readouterr().err


def test_bench_a_group_times_its_library():
    """A group (here a list of targets: the Python form of 'softgen build --target avx2,scalar')
    is one library, timed as itself; its rows name the member it runs here."""
    if "avx2" not in RUNNABLE:
        pytest.skip("avx2 does not run here")
    res = B.run(B.BenchConfig(shapes=[(1, 300)], against=[], targets=[["avx2", "scalar"]], copy=False, **FAST))
    (row,) = res["rows"]
    assert row["variant"].startswith("softgen ") and "auto" in row["variant"], row["variant"]
    assert row["target"] == "avx2" and row["max_rel_err"] <= 1e-4
    assert res["variants"][0]["kernel"].endswith("__avx2_scalar")


def test_cli_bench_group_that_cannot_run(capsys, monkeypatch):
    if softgen.host_target() == "neon":
        pytest.skip("an aarch64 host runs the aarch64 group")
    monkeypatch.setattr(B, "run", lambda *a, **k: pytest.fail("measured a library that cannot run"))
    assert cli.main(["bench", "--target", "aarch64", "--quiet"]) == 2
    assert "the aarch64 library (neon, scalar, aarch64) cannot run on this CPU" in capsys.readouterr().err


# -- the bench/ scripts use this machinery ------------------------------------------------------------------

def test_bench_scripts_reuse_the_package(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench import common, softmax
    for name in ("time_interleaved", "calibrate", "render_table", "machine_info", "gbps", "parse_size",
                 "numpy_softmax", "CopyKernel"):
        assert getattr(common, name) is getattr(B, name), name
    assert softmax.parse_size("8192x128") == (8192, 128) and softmax.parse_size("1K") == (1, 1024)
    cfg = softmax.Config(sizes=[(1, 1000)], algorithms=["two-pass"], targets=["scalar"], torch=False,
                         overhead=False, min_time=0.001, budget=0.0, min_rounds=2, max_rounds=2, progress=False)
    rows = softmax.run(cfg)
    by = {r["impl"]: r for r in rows if r.get("kind") == "softmax"}
    assert by.keys() == {"softgen", "numpy", "copy"}
    assert by["copy"]["copies_per_call"] == B.CopyKernel.reps(1000) and by["copy"]["gbps"] > 0
    assert by["softgen"]["vs_copy"] == pytest.approx(by["softgen"]["seconds"] / by["copy"]["seconds"])


# -- backends ------------------------------------------------------------------------------------------------

def test_bench_c_and_tvm_backends():
    pytest.importorskip("tvm")
    cfg = B.BenchConfig(shapes=[(1, 1000)], against=[], backends=["c", "tvm"], copy=False, **FAST)
    res = B.run(cfg)
    host = softgen.host_target()
    names = [r["variant"] for r in res["rows"]]
    assert len(names) == 2 and names[0].startswith(f"softgen {host}/c ") and names[1].startswith(f"softgen {host}/tvm ")
    assert {v["backend"] for v in res["variants"]} == {"c", "tvm"}
    assert all(r["max_rel_err"] < 1e-5 for r in res["rows"])


# -- bench/issue13.py: the issue's closing tables --------------------------------------------------------

def test_issue13_times_softgen_as_the_tuner_does(monkeypatch):
    """bench/issue13.py times softgen's kernels as softgen tune times its candidates
    (tune.timed_variant): a row pair of at most C_LOOP_MAX elements back to back in C (tune.CLoop),
    so tuned/best compares what the tuner compared, without a Python call's ~0.3 us per 1K row;
    there auto is also timed through a Python call (issue13.CALL), which table (d) compares with
    the peers'. Several buffer pairs (rotated beyond the LLC): Python calls, no second auto."""
    tune = importlib.import_module("softgen.tune")   # softgen.tune is the function
    if tune._repeat is None:
        pytest.skip("softgen._fastcall is not built")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench import issue13
    k = softgen.compile("softmax", target="scalar", algorithm="two-pass")
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    y = np.empty_like(x)
    named = {"model auto": k, "sweep 2p u4a2": k}
    v = issue13.softgen_variants(named, [(x, y)])
    assert isinstance(v["model auto"], tune.CLoop) and isinstance(v["sweep 2p u4a2"], tune.CLoop)
    assert set(v) == set(named) | {issue13.CALL + "model auto"} and not isinstance(v[issue13.CALL + "model auto"], tune.CLoop)
    issue13._run_once(v[issue13.CALL + "model auto"])
    assert np.array_equal(y, k(x))
    v = issue13.softgen_variants(named, [(x, y), (x.copy(), y.copy())])
    assert set(v) == set(named) and not any(isinstance(t, tune.CLoop) for t in v.values())
    # table (d): auto through a Python call where there is one, as the peers are called
    res = {(1, 1024): {"model auto": 1e-7, issue13.CALL + "model auto": 4e-7, "peer numpy": 8e-7}}
    rows, base = issue13.peer_rows(res, [SimpleNamespace(name="numpy")])
    assert base == "model auto" and rows[0]["auto_ns"] == pytest.approx(4e-7 / 1024 * 1e9) and rows[0]["numpy"] == 2


def test_issue13_quick(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench import issue13
    assert issue13.main(["--out", str(tmp_path / "nope")]) == 2
    assert "--out" in capsys.readouterr().err
    assert issue13.main(["--quick", "--target", "scalar", "--sizes", "1K", "--shapes", "4x256",
                         "--against", "numpy", "--out", str(tmp_path)]) == 0
    txt = capsys.readouterr().out
    (j,) = tmp_path.glob("issue13-*-scalar-quick.json")
    assert j.with_suffix(".txt").read_text() == txt
    d = json.loads(j.read_text())
    assert [r["size"] for r in d["auto"]] == ["1K", "4x256"] and d["commit"] and d["quick"]
    prev = next(a for a in get_target("scalar").auto_algorithms
                if a in softgen.passes.applicable_algorithms(softgen.ops.build_program("softmax")))
    assert d["previous_auto"].startswith(prev + " ")
    for r in d["auto"]:          # the sweep's best is the fastest candidate timed, auto no faster than it
        raw = d["raw"][r["size"]]   # the sweep's finalists (tune.pick_finalists) re-timed with the autos: the best of them
        assert 2 <= len(raw["_first"]) <= issue13.FINALISTS_MAX and r["best"] in {k[len("sweep "):] for k in raw["_first"]}
        assert r["best_ns"] == pytest.approx(min(raw[k] for k in raw["_first"]) / (r["rows"] * r["n"]) * 1e9)
        assert r["model_vs_best"] == pytest.approx(raw["model auto"] / raw["sweep " + r["best"]])
    # per size: tune's candidates there, sampled (each kept algorithm's default and one other)
    assert list(d["sweep"]) == ["1K", "4x256"] and all(len(v) >= 2 for v in d["sweep"].values())
    assert d["sweep_total"] > sum(len(v) for v in d["sweep"].values())
    assert d["dram"]["rows"][0]["variant"] == "two-pass" and 0 < d["dram"]["rows"][0]["fraction"]
    assert [r["size"] for r in d["peer_ratios"]] == ["1K", "4x256"] and d["peer_ratios"][1]["numpy"] > 0
    for head in ("## (a)", "## (b)", "## (c)", "## (d)", "previous auto (before issue 13)"):
        assert head in txt
    try:
        B.require_matplotlib()
        assert j.with_suffix(".png").read_bytes()[:4] == b"\x89PNG" and d["plot"]
    except UsageError:
        assert "plot: not drawn" in txt and d["plot"] is None
    if issue13.threads_supported():
        assert [r["size"] for r in d["threads"]] == ["1K", "4K", "4x512"]
    else:
        assert d["threads"] is None and "not available" in txt
    # a focused re-run: one shape, table (a) only, the finalists re-timed by tune.measure
    assert issue13.main(["--quick", "--target", "scalar", "--tables", "x", "--out", str(tmp_path)]) == 2
    assert issue13.main(["--quick", "--target", "scalar", "--sizes", "none", "--shapes", "4x256", "--tables", "a",
                         "--final-seconds", "0.05", "--against", "numpy", "--out", str(tmp_path)]) == 0
    txt = capsys.readouterr().out
    d = json.loads(next(tmp_path.glob("issue13-*-scalar-quick-a.json")).read_text())
    assert [r["size"] for r in d["auto"]] == ["4x256"] and d["tables"] == "a" and d["final"]["seconds"] == 0.05
    assert "## (a)" in txt and not any(h in txt for h in ("## (b)", "## (c)", "## (d)")) and "final noise" in txt
    assert not any("=True" in k for k in d["raw"]["4x256"])    # knobs named once (pp, lz), not "pp pipeline=True"
