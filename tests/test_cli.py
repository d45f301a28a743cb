"""The ``softgen`` command line, driven through subprocesses exactly as a user would run it.

Contract (softgen/cli.py): usage errors print ONE line on stderr and exit 2, other failures print
one line and exit 1; never a traceback, never output on stdout when failing, never files left
behind by a failed build.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import softgen
from softgen import cli
from softgen.targets import is_group_spec, target_group

SUBCOMMANDS = ["targets", "ops", "build", "emit", "explain", "bench"]
BYTES_PER_ELEMENT = {"three-pass-recompute": 16, "three-pass-reload": 20, "two-pass": 12, "online": 12}
HOST = softgen.host_target()


def sg(*args: str, cwd=None, exe=None) -> subprocess.CompletedProcess:
    cmd = [exe] if exe else [sys.executable, "-m", "softgen"]
    env = {k: v for k, v in os.environ.items() if k != "SOFTGEN_DEBUG"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def sg_in(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``sg`` in this process (``cli.main`` as ``python -m softgen`` runs it: stdout, stderr, exit
    code; an escaping exception prints its traceback and exits 1, as the interpreter would), for
    commands that only parse, list or explain: a subprocess would mostly measure Python start-up.
    ``test_in_process_runs_are_the_command_s`` checks that both give the same result."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.delenv("SOFTGEN_DEBUG", raising=False)
        if cwd is not None:
            mp.chdir(cwd)
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = cli.main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["softgen", *args], code, out.getvalue(), err.getvalue())


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"exit {res.returncode}; stderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr
    return res.stdout


def failed(res: subprocess.CompletedProcess, code: int) -> str:
    """Exit ``code``, exactly one line on stderr starting with 'softgen: error:', stdout empty."""
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, f"exit {res.returncode}, expected {code}; stderr: {res.stderr!r}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {res.stderr!r}"
    assert lines[0].startswith("softgen: error: "), lines[0]
    assert res.stdout == "", f"stdout not empty: {res.stdout[:200]!r}"
    return lines[0]


# -- help and listings --------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [[], *([c] for c in SUBCOMMANDS)], ids=["top", *SUBCOMMANDS])
def test_help_exits_zero(cmd):
    out = ok(sg_in(*cmd, "--help"))
    assert out.startswith("usage: softgen")
    for word in (SUBCOMMANDS if not cmd else ["--help"]):
        assert word in out


def test_version():
    assert ok(sg("--version")).strip() == f"softgen {softgen.__version__}"


def test_console_script():
    exe = shutil.which("softgen")
    if exe is None:
        pytest.skip("softgen console script not on PATH")
    out = ok(sg("--help", exe=exe))
    assert "usage: softgen" in out
    failed(sg("build", "--op", "nope", exe=exe), 2)


def test_targets_text():
    out = ok(sg_in("targets"))
    lines = {ln.split()[0]: ln for ln in out.splitlines()}
    assert {"scalar", "avx2", "avx512"} <= set(lines)
    assert "runs here (host default)" in lines[HOST]
    assert "runs here" in lines["scalar"]
    if HOST != "avx512":
        assert "missing" in lines["avx512"] and "avx512f" in lines["avx512"]


def test_targets_json():
    rows = json.loads(ok(sg_in("targets", "--json")))
    by = {r["name"]: r for r in rows}
    assert {"scalar", "avx2", "avx512"} <= set(by)
    for r in rows:
        assert set(r) >= {"name", "lanes", "runnable", "missing", "host_default"}
        assert r["runnable"] == (not r["missing"])
    assert [r["name"] for r in rows if r["host_default"]] == [HOST]
    assert by["scalar"]["runnable"] and by["scalar"]["lanes"] == 1
    assert by["avx2"]["lanes"] == 8 and by["avx512"]["lanes"] == 16
    assert by[HOST]["runnable"]
    if HOST == "avx2":
        assert not by["avx512"]["runnable"] and "avx512f" in by["avx512"]["missing"]


def test_ops():
    out = ok(sg_in("ops"))
    assert out.startswith("softmax(") and "\nlog_softmax(" in out
    for alg in BYTES_PER_ELEMENT:
        assert alg in out
    rows = json.loads(ok(sg_in("ops", "--json")))
    assert [r["name"] for r in rows] == list(softgen.OPS)
    by = {r["name"]: r for r in rows}
    for name in ("softmax", "log_softmax"):
        assert set(by[name]["algorithms"]) == set(BYTES_PER_ELEMENT)
        assert "scale" in by[name]["params"]
    assert by["stablemax"]["algorithms"] == ["direct", "direct-reload"] and by["stablemax"]["params"] == {}


# -- build --------------------------------------------------------------------------------------

def _manifest_ok(path: Path, op: str, algorithm: str, target: str) -> dict:
    m = json.loads(path.read_text())
    assert m["op"] == op and m["algorithm"] == algorithm
    assert m["target"]["name"] == target
    assert m["softgen_version"] == softgen.__version__
    assert set(m["schedule"]) == {"unroll", "accumulators", "block", "split", "chunk"}
    assert all(isinstance(v, int) and v > 0 for v in m["schedule"].values())
    acc = m["accuracy"]
    assert isinstance(acc["max_rel_error"], float) and 0 <= acc["max_rel_error"] < 1e-4
    assert isinstance(acc["max_abs_error"], float) and 0 <= acc["max_abs_error"] < 1e-3
    assert m["symbol"] == m["name"] == path.stem
    return m


def test_build_defaults(tmp_path):
    out = ok(sg("build", cwd=tmp_path))
    assert not (tmp_path / "build").exists()          # setuptools' directory: not softgen's default
    files = sorted(p.name for p in (tmp_path / "softgen-out").iterdir())
    libs = [f for f in files if f.startswith("lib") and f.endswith(".so")]
    assert len(libs) == 1
    name = libs[0][3:-3]
    assert {f"{name}.h", f"{name}.json", f"{name}.c"} <= set(files)
    assert name.startswith("softgen_f32_softmax_") and f"__{HOST}_" in name
    assert out.startswith(f"{name}: softmax / ")
    assert f"softgen-out/lib{name}.so" in out
    m = _manifest_ok(tmp_path / "softgen-out" / f"{name}.json", "softmax",
                     softgen.compile("softmax", target="host").algorithm, HOST)
    assert m["accuracy"]["executed"] == "native"


def test_build_avx512_cross(tmp_path):
    """avx512 builds (and its manifest is filled, emulated if need be) even where it cannot run."""
    out = ok(sg("build", "--op", "softmax", "--algorithm", "two-pass", "--target", "avx512",
                "--name", "my_softmax", "-o", "out/", cwd=tmp_path))
    assert out.startswith("my_softmax: softmax / two-pass / avx512 / ")
    d = tmp_path / "out"
    assert sorted(p.name for p in d.iterdir()) == \
        ["libmy_softmax.so", "my_softmax.c", "my_softmax.h", "my_softmax.json", "my_softmax.pc",
         "my_softmaxConfig.cmake", "my_softmaxConfigVersion.cmake"]
    m = _manifest_ok(d / "my_softmax.json", "softmax", "two-pass", "avx512")
    assert m["target"]["lanes"] == 16
    assert m["traffic"]["bytes_per_element"] == 12
    assert "int my_softmax(const float *x, float *y" in (d / "my_softmax.h").read_text()
    if HOST != "avx512":
        assert m["accuracy"]["executed"].startswith("emulated")


def test_build_json_and_options(tmp_path):
    out = ok(sg("build", "--op", "log_softmax", "--algorithm", "three-pass-reload", "--target",
                "scalar", "--temperature", "2", "--unroll", "2", "--accumulators", "2",
                "--name", "lsm", "-o", "o", "--json", cwd=tmp_path))
    m = json.loads(out)
    assert m == json.loads((tmp_path / "o" / "lsm.json").read_text())
    assert m["params"] == {"scale": 0.5}
    assert m["schedule"]["unroll"] == 2 and m["schedule"]["accumulators"] == 2
    _manifest_ok(tmp_path / "o" / "lsm.json", "log_softmax", "three-pass-reload", "scalar")


# -- schedule knobs ------------------------------------------------------------------------------

def test_knob_flags_are_the_schedule_table_s():
    """One flag per knob of schedule.KNOB_TABLE on build, emit and explain, its help the table's."""
    from softgen.numerics.constants import EXP_VARIANTS
    from softgen.schedule import KNOB_HELP
    sub = next(a for a in cli._parser()._actions if a.dest == "cmd").choices
    for cmd in ("build", "emit", "explain"):
        flags = {a.dest: a for a in sub[cmd]._actions}
        for knob, text in KNOB_HELP.items():
            assert flags[knob].help == text and flags[knob].option_strings == [f"--{knob}"], (cmd, knob)
        assert list(flags["exp"].choices) == list(EXP_VARIANTS)
    assert "--lazymax --exp t32" in ok(sg_in("build", "--help"))


# flags -> (the manifest's schedule entries, the default name's tag); avx2: a target with streams, t32 not its default
KNOB_CASES = {
    "stream": (["--algorithm", "two-pass", "--stream"], {"stream": True}, "_nt"),
    "prefetch": (["--algorithm", "two-pass", "--prefetch", "1024"], {"prefetch": 1024}, "_pf1024"),
    "exp": (["--algorithm", "online", "--exp", "t32"], {"exp": "t32"}, "_t32"),
    "rows": (["--algorithm", "two-pass", "--rows", "4"], {"rows": 4}, "_r4"),
    "lazymax": (["--algorithm", "three-pass-reload", "--lazymax"], {"lazymax": True}, "_lz"),
    "pipeline": (["--algorithm", "three-pass-reload", "--pipeline"], {"pipeline": True}, "_pp"),
    "two": (["--algorithm", "three-pass-reload", "--lazymax", "--exp", "t32"], {"exp": "t32", "lazymax": True},
            "_t32_lz"),
}


@pytest.mark.parametrize("case", KNOB_CASES)
def test_each_knob_flag_reaches_the_schedule(case):
    flags, knobs, tag = KNOB_CASES[case]
    d = json.loads(ok(sg_in("explain", "--json", "--target", "avx2", *flags)))
    assert {k: v for k, v in d["schedule"].items() if k not in ("unroll", "accumulators", "block", "split", "chunk")} \
        == knobs
    assert d["name"].endswith(f"_u32_acc2{tag}"), d["name"]
    c = ok(sg_in("emit", "--target", "avx2", *flags))
    assert f"{d['name']}:" in c[:c.index("*/")]


def test_auto_knobs_are_every_variant_s():
    """--algorithm auto: the given knob in every variant's schedule (the model prices the others)."""
    d = json.loads(ok(sg_in("explain", "--json", "--target", "avx2", "--lazymax", "--prefetch", "64")))
    assert d["name"].endswith("_pf64_lz") and len(d["variants"]) > 1
    assert all(v["schedule"]["lazymax"] is True and v["schedule"]["prefetch"] == 64 for v in d["variants"])
    assert "three-pass-reload" in {v["algorithm"] for v in d["variants"]}   # where lazymax applies


def test_a_multi_isa_library_s_name_tags_the_knobs():
    """A group's default name ends in the knobs given (lane-independent; the members' own names
    and schedules carry their full tags)."""
    d = json.loads(ok(sg_in("explain", "--json", "--target", "avx2,avx512", "--algorithm", "two-pass",
                            "--stream", "--prefetch", "1024")))
    assert d["name"] == "softgen_f32_softmax_2p__avx512_avx2_nt_pf1024"
    assert [m["explain"]["schedule"]["stream"] for m in d["isas"]] == [True, True]
    assert all(m["symbol"] == f"{d['name']}__{m['isa']}" for m in d["isas"])
    plain = json.loads(ok(sg_in("explain", "--json", "--target", "avx2,avx512", "--algorithm", "two-pass")))
    assert plain["name"] == "softgen_f32_softmax_2p__avx512_avx2"


def test_build_with_two_knobs_runs_against_float64(tmp_path):
    """The README's tuned single-algorithm kernel (3pl t32 lz) exported from the CLI: its manifest
    and name say the knobs, and the library computes softmax (references that move lazymax's
    reference: ascending rows, a late spike)."""
    import ctypes

    import numpy as np
    out = json.loads(ok(sg_in("build", "--algorithm", "three-pass-reload", "--lazymax", "--exp", "t32",
                              "-o", str(tmp_path), "--json")))
    name = out["name"]
    assert name.startswith(f"softgen_f32_softmax_3pl__{HOST}_u") and name.endswith("_acc2_t32_lz")
    assert name.endswith("_t32_lz") and out["schedule"]["lazymax"] is True and out["schedule"]["exp"] == "t32"
    assert "lazymax" in (tmp_path / f"{name}.c").read_text()
    lib = ctypes.CDLL(str(tmp_path / f"lib{name}.so"))
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 4
    fn.restype = ctypes.c_int
    rng = np.random.default_rng(13)
    for n in (1, 70, 1000, 5003):
        x = np.stack([np.linspace(-30, 30, n), rng.normal(0, 8, n), rng.normal(0, 1, n)]).astype(np.float32)
        x[2, -1] = 60.0                         # a late maximum: the running reference moves
        y = np.full_like(x, np.nan)
        assert fn(x.ctypes.data, y.ctypes.data, 3, n, n, n) == 0
        x64 = x.astype(np.float64)
        ref = np.exp(x64 - x64.max(axis=1, keepdims=True))
        ref /= ref.sum(axis=1, keepdims=True)
        assert np.all(np.abs(y - ref) <= 1e-5 * ref + 1e-30), (n, np.max(np.abs(y - ref) / ref))


# -- emit / explain -----------------------------------------------------------------------------

def test_emit_c():
    src = ok(sg("emit", "--op", "softmax", "--algorithm", "online", "--target", "avx2"))
    head = src[:src.index("*/")]
    assert src.startswith("/*")
    assert "softgen_f32_softmax_online__avx2_" in head
    assert f"generated by softgen {softgen.__version__}" in head
    assert "op:        softmax(" in head
    assert "algorithm: online" in head
    assert "target:    avx2" in head
    assert "schedule:  unroll=" in head
    assert "__attribute__((visibility(\"default\")))" in src
    assert "int softgen_f32_softmax_online__avx2_" in src


def test_emit_asm_avx512():
    asm = ok(sg("emit", "--op", "log_softmax", "--target", "avx512", "--asm"))
    assert "%zmm" in asm
    assert "softgen_f32_log_softmax_" in asm
    c = ok(sg("emit", "--op", "log_softmax", "--target", "avx512", "--algorithm", "two-pass"))   # not a dispatcher
    assert "%zmm" not in c and "__m512" in c


def test_explain_text():
    out = ok(sg_in("explain", "--op", "softmax", "--algorithm", "three-pass-reload"))
    assert "## IR as defined" in out and "## pass plan" in out
    assert "after the 'three-pass-reload' rewrite" in out
    assert "materialize" in out
    assert "3R + 2W = 20 B/element" in out


@pytest.mark.parametrize("alg", list(BYTES_PER_ELEMENT))
def test_explain_json_bytes_per_element(alg):
    d = json.loads(ok(sg_in("explain", "--json", "--op", "softmax", "--algorithm", alg)))
    assert d["algorithm"] == alg and d["op"] == "softmax" and d["target"] == HOST
    assert d["traffic"]["bytes_per_element"] == BYTES_PER_ELEMENT[alg]
    assert d["traffic"]["bytes_per_element"] == 4 * (d["traffic"]["reads"] + d["traffic"]["writes"])
    assert isinstance(d["plan"], list) and d["plan"][-1].startswith("traffic:")


# -- errors -------------------------------------------------------------------------------------

USAGE_ERRORS = {
    "missing-subcommand": ([], "required"),
    "unknown-subcommand": (["frobnicate"], "invalid choice"),
    "unknown-flag": (["targets", "--bogus"], "unrecognized"),
    "unknown-op": (["build", "--op", "softmaxx"], "unknown op"),
    "unknown-op-emit": (["emit", "--op", "nope"], "unknown op"),
    "unknown-op-explain": (["explain", "--op", "nope"], "unknown op"),
    "unknown-target": (["build", "--target", "sse9"], "unknown target"),
    "unknown-target-emit": (["emit", "--target", "AVX2"], "unknown target"),
    "unknown-algorithm": (["build", "--algorithm", "four-pass"], "unknown algorithm"),
    "unknown-algorithm-explain": (["explain", "--algorithm", "x"], "unknown algorithm"),
    "name-digit": (["build", "--name", "1abc"], "invalid kernel name"),
    "name-dash": (["build", "--name", "a-b"], "invalid kernel name"),
    "name-shell": (["build", "--name", "x;rm -rf /"], "invalid kernel name"),
    "name-empty": (["build", "--name", ""], "invalid kernel name"),
    "name-path": (["build", "--name", "../evil"], "invalid kernel name"),
    "name-keyword": (["emit", "--name", "int"], "invalid kernel name"),
    "name-too-long": (["build", "--name", "a" * 65], "invalid kernel name"),
    "name-newline": (["build", "--name", "abc\n"], "invalid kernel name"),
    "name-libc": (["build", "--name", "puts"], "C library name"),
    "name-template-macro": (["build", "--name", "V_LOAD"], "generated code"),
    "param-no-equals": (["build", "--param", "scale"], "NAME=VALUE"),
    "param-no-name": (["build", "-p", "=2"], "NAME=VALUE"),
    "param-unknown": (["build", "--param", "alpha=1"], "no parameter"),
    "param-non-numeric": (["build", "--param", "scale=abc"], "not a number"),
    "param-inf": (["build", "--param", "scale=inf"], "scale"),
    "param-nan": (["build", "--param", "scale=nan"], "scale"),
    "param-temperature-nan": (["emit", "-p", "temperature=nan"], "temperature"),
    "scale-zero": (["build", "--scale", "0"], "scale"),
    "scale-negative": (["build", "--scale", "-1.5"], "scale"),
    "scale-non-numeric": (["build", "--scale", "big"], "--scale"),
    "scale-underflows-f32": (["build", "--scale", "1e-50"], "float32"),
    "temperature-zero": (["build", "--temperature", "0"], "temperature"),
    "scale-and-temperature": (["emit", "--scale", "2", "--temperature", "3"], "not both"),
    "scale-twice-param": (["build", "--param", "scale=2", "--scale", "3"], "scale given twice"),
    "scale-twice": (["build", "--scale", "2", "--scale", "3"], "--scale given twice"),
    "param-twice": (["build", "-p", "scale=2", "-p", "scale=3"], "scale given twice"),
    "unroll-twice": (["emit", "--unroll", "2", "--unroll", "4"], "--unroll given twice"),
    "unroll-zero": (["build", "--unroll", "0"], "unroll"),
    "unroll-float": (["build", "--unroll", "1.5"], "--unroll"),
    "unroll-word": (["emit", "--unroll", "four"], "--unroll"),
    "unroll-huge": (["emit", "--unroll", "1000"], "unroll"),
    "accumulators-too-large": (["build", "--accumulators", "64"], "accumulators"),
    "accumulators-zero": (["emit", "--accumulators", "0"], "accumulators"),
    "block-bad": (["explain", "--block", "3"], "block"),
    "rows-too-many": (["emit", "--rows", "9"], "schedule rows must be an integer in [1, 8]"),
    "rows-word": (["build", "--rows", "two"], "--rows"),
    "prefetch-not-16": (["explain", "--prefetch", "17"], "multiple of 16"),
    "prefetch-twice": (["emit", "--prefetch", "16", "--prefetch", "32"], "--prefetch given twice"),
    "exp-unknown": (["build", "--exp", "p9"], "choose from 'p5c2'"),
    "rows-and-pipeline": (["emit", "--rows", "2", "--pipeline"], "exclude each other"),
    "stream-neon": (["emit", "--target", "neon", "--algorithm", "two-pass", "--stream"], "no non-temporal stores"),
    "stream-scalar": (["build", "--target", "scalar", "--stream"], "no non-temporal stores"),
    "knob-tvm": (["emit", "--backend", "tvm", "--algorithm", "two-pass", "--exp", "t32"],
                 "--exp: backend tvm does not lower schedule knobs"),
    "lazymax-two-pass": (["build", "--algorithm", "two-pass", "--lazymax", "--target", "avx2"],
                         "--lazymax changes nothing in softmax / two-pass"),
    "lazymax-log-softmax-auto": (["emit", "--op", "log_softmax", "--lazymax", "--target", "avx2"],
                                 "--lazymax changes nothing in any variant of the auto dispatcher"),
    "rows-topk": (["explain", "--op", "topk_softmax", "--rows", "2", "--target", "avx2"],
                  "--rows changes nothing in any variant of the auto dispatcher: top-k"),
    "pipeline-row-params": (["emit", "--op", "reweight", "--pipeline", "--algorithm", "direct"],
                            "--pipeline changes nothing in reweight / direct: it has per-row parameters"),
    "knob-matrix-op": (["emit", "--op", "sinkhorn", "--prefetch", "64"], "row-kernel knobs"),
    "bench-bad-sizes": (["bench", "--sizes", "1K,lots"], "1K,64K,1M,16M"),
    "bench-shape-as-size": (["bench", "--sizes", "4096x512"], "use --shapes"),
    "bench-bad-shapes": (["bench", "--shapes", "4096by512"], "ROWSxN"),
    "bench-bad-against": (["bench", "--against", "numpy,jax"], "numpy,torch,onnxruntime"),
    "bench-matrix-op": (["bench", "--op", "sinkhorn"], "row ops"),
    "bench-bad-target": (["bench", "--target", "sse9"], "unknown target"),
    "bench-bad-plus": (["bench", "--target", "avx2+"], "join target names with +"),
}


# run as subprocesses too: one per way the parser fails (argparse, a subcommand's checks, values)
USAGE_ERRORS_SUBPROCESS = ["missing-subcommand", "unknown-flag", "unknown-op", "name-shell", "param-nan",
                           "scale-twice", "bench-bad-plus", "lazymax-two-pass"]


@pytest.fixture(scope="module")
def usage_results(tmp_path_factory):
    """All usage-error commands, in this process (each in an empty directory of its own):
    {case: (result, directory)}."""
    dirs = {case: tmp_path_factory.mktemp(case) for case in USAGE_ERRORS}
    return {case: (sg_in(*args, cwd=dirs[case]), dirs[case]) for case, (args, _) in USAGE_ERRORS.items()}


def test_in_process_runs_are_the_command_s(usage_results, tmp_path, monkeypatch):
    """``sg_in`` gives what ``python -m softgen`` gives: exit code, stdout, stderr (a sample of
    usage errors, a help text, a listing)."""
    monkeypatch.setenv("COLUMNS", "100")       # the same help layout on a terminal (pytest -s)
    cases = {c: USAGE_ERRORS[c][0] for c in USAGE_ERRORS_SUBPROCESS}
    cases |= {"help": ["explain", "--help"], "ops": ["ops", "--json"]}
    dirs = {c: tmp_path / c for c in cases}
    for d in dirs.values():
        d.mkdir()
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = {c: pool.submit(sg, *args, cwd=dirs[c]) for c, args in cases.items()}
        for c, args in cases.items():
            res, inproc = procs[c].result(), usage_results[c][0] if c in usage_results else sg_in(*args)
            assert (res.returncode, res.stdout, res.stderr) == (inproc.returncode, inproc.stdout, inproc.stderr), c
            assert list(dirs[c].iterdir()) == [], f"{c}: wrote files"


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_usage_errors_exit_2_with_one_line(usage_results, case):
    res, cwd = usage_results[case]
    line = failed(res, 2)
    assert USAGE_ERRORS[case][1] in line
    assert list(cwd.iterdir()) == [], "a usage error wrote files"


def test_bad_compiler_exits_1_and_writes_nothing(tmp_path):
    line = failed(sg("build", "--cc", "/nonexistent/cc", "-o", "out", cwd=tmp_path), 1)
    assert "/nonexistent/cc" in line
    assert not (tmp_path / "out").exists()
    # an unparsable compiler command is a failure too, not a traceback
    failed(sg("build", "--cc", '"gcc', "-o", "out", cwd=tmp_path), 1)
    assert not (tmp_path / "out").exists()
    failed(sg("emit", "--asm", "--cc", "/nonexistent/cc", cwd=tmp_path), 1)


def test_failing_compiler_leaves_existing_directory_untouched(tmp_path):
    """A compiler that runs but fails (multi-line diagnostics are folded into one line)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    false = shutil.which("false")
    if false is None:
        pytest.skip("no 'false' command")
    line = failed(sg("build", "--cc", false, "--target", "scalar", "-o", "out", cwd=tmp_path), 1)
    assert "C compiler failed" in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("where", ["file/sub", "file"])
def test_output_under_a_regular_file_exits_1(tmp_path, where):
    (tmp_path / "file").write_text("not a directory")
    line = failed(sg("build", "--target", "scalar", "-o", where, cwd=tmp_path), 1)
    assert where in line
    assert (tmp_path / "file").read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_matrix_op_build_explain_and_errors(tmp_path):
    """A matrix op through the CLI: the library, a header with the matrix ABI, the explained
    phases; a bad iteration count is a usage error."""
    out = ok(sg("build", "--op", "sinkhorn", "-p", "n_iter=2", "-o", str(tmp_path), "--json"))
    manifest = json.loads(out)
    assert manifest["abi"].endswith("size_t ldy, size_t m)") and manifest["params"]["n_iter"] == 2
    assert "size_t m);" in (tmp_path / manifest["files"]["header"]).read_text()
    text = ok(sg("explain", "--op", "sinkhorn"))
    assert "phase 1 (cols" in text and "colreduce_online" in text and "2R + 1W" in text
    failed(sg("build", "--op", "sinkhorn", "-p", "n_iter=0", "-o", str(tmp_path / "x")), 2)
    assert not (tmp_path / "x").exists()


# -- bench --------------------------------------------------------------------------------------

def test_bench_table_and_progress():
    res = sg("bench", "--sizes", "1K", "--shapes", "4x300", "--against", "numpy", "--min-time", "0.001",
             "--budget", "0", "--rounds", "2")
    out = ok(res)
    header = next(line for line in out.splitlines() if line.startswith("size"))
    for col in ("fits", "variant / peer", "ns/elem", "GB/s", "of copy", "vs best peer", "noise"):
        assert col in header
    rows = [line.split()[0] for line in out.splitlines() if line.startswith(("1K ", "4x300 "))]
    assert rows == ["1K"] * 3 + ["4x300"] * 3            # softgen auto, numpy, copy
    assert ("softgen auto " in out or "(auto)" in out) and ("ETA" in res.stderr or "it/s" in res.stderr)  # a dispatcher, or one variant; built-in bar or tqdm


def test_bench_target_list_versus_group():
    """bench --target: commas separate libraries timed side by side (a list), a group name or
    a+b is one library over several ISAs (a group); the help says which is which."""
    def entries(spec):
        return cli._bench_config(cli._parser().parse_args(["bench", "--sizes", "1K", "--target", spec])).targets
    assert entries("avx2,avx512") == ["avx2", "avx512"]
    assert entries("x86-64") == ["x86-64"] and entries("avx2+avx512") == [["avx2", "avx512"]]
    assert entries("avx2+avx512,scalar") == [["avx2", "avx512"], "scalar"]
    assert is_group_spec(["avx2", "avx512"]) and not is_group_spec("avx2")
    with pytest.raises(softgen.UsageError, match="one architecture|arch"):
        target_group(entries("avx2+neon")[0])
    text = " ".join(ok(sg_in("bench", "--help")).split())
    assert "--target avx2,avx512 times two libraries (a list)" in text
    assert "--target x86-64 or avx2+avx512 one (a group)" in text


# -- softgen cache ------------------------------------------------------------------------------
CACHE_ACTIONS = ["list", "show", "clear", "prune", "export", "import"]


@pytest.fixture
def cache_records(tmp_path, monkeypatch):
    """A cache of its own (sg() passes os.environ on) holding two tuning records."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "cache"))
    from softgen import tunedb
    for n, alg in (((1, 65535), "three-pass-reload"), ((65536, 1 << 26), "two-pass")):
        tunedb.record("softmax", {}, "scalar", "c", n=n, rows=1, algorithm=alg, schedule={"unroll": 2},
                      ns_per_element=0.5, noise=0.01, repetitions=20)
    return tmp_path


@pytest.fixture
def cache_env(cache_records):
    """``cache_records`` and one kernel."""
    import numpy as np
    softgen.compile("softmax", algorithm="online", target="scalar", name="cli_cache_probe")(np.ones((1, 4), np.float32))
    return cache_records


def test_cache_help():
    out = ok(sg_in("cache", "--help"))
    assert out.startswith("usage: softgen cache") and all(a in out for a in CACHE_ACTIONS)
    assert "cache" in ok(sg_in("--help"))


def test_cache_list_show_export_import_clear(cache_env):
    """As a user runs them (subprocesses) where the result depends on it (a kernel this process
    loaded is never removed by it), else in this process (``sg_in``)."""
    out = ok(sg("cache", "list"))
    assert "kernel cache" in out and "entries" in out and "512.0 MiB" in out
    assert "2 records" in out and "(this machine)" in out
    listing = json.loads(ok(sg_in("cache", "list", "--json")))
    assert listing["kernels"]["entries"] >= 1 and listing["kernels"]["cap_bytes"] == 512 << 20
    assert listing["tuning"]["groups"][0]["records"] == 2
    table = ok(sg_in("cache", "show", "softmax")).splitlines()
    assert table[0].split()[:3] == ["target", "backend", "n"] and len(table) == 3
    assert "three-pass-reload" in table[1] and "two-pass" in table[2] and "unroll=2" in table[1]
    assert "no tuning records" in ok(sg_in("cache", "show", "log_softmax"))
    assert len(json.loads(ok(sg_in("cache", "show", "softmax", "--json")))) == 2
    f = cache_env / "records.jsonl"
    assert "wrote 2 tuning records" in ok(sg_in("cache", "export", str(f)))
    assert len(f.read_text().splitlines()) == 2
    assert "removed 2 records" in ok(sg_in("cache", "clear", "--tuning"))
    assert "kernel cache: removed 0" in ok(sg_in("cache", "prune"))     # under the cap: nothing to do
    assert "imported 2 tuning records" in ok(sg_in("cache", "import", str(f)))
    assert len(ok(sg_in("cache", "show", "softmax")).splitlines()) == 3
    out = ok(sg("cache", "clear", "--kernels"))
    assert "kernel cache: removed" in out and "tuning" not in out
    assert json.loads(ok(sg("cache", "list", "--json")))["kernels"]["entries"] == 0
    assert "removed 2 records" in ok(sg("cache", "clear"))


@pytest.mark.parametrize("args, message", [
    (["cache"], "cache: the following arguments are required: ACTION"),
    (["cache", "nope"], "cache: argument ACTION: invalid choice: 'nope'"),
    (["cache", "show"], "the following arguments are required: op"),
    (["cache", "show", "nope"], "unknown op 'nope'"),
    (["cache", "clear", "--kernels", "--tuning"], "not allowed with argument"),
    (["cache", "import", "MISSING"], "MISSING: no such file"),
    (["cache", "import", "BAD"], "BAD:2: not JSON"),
    (["cache", "export", "OUT", "--op", "nope"], "unknown op 'nope'"),
])
def test_cache_usage_errors(cache_records, args, message):
    cache_env = cache_records
    bad = cache_env / "bad.jsonl"
    bad.write_text("\n{oops\n")
    paths = {"MISSING": str(cache_env / "missing.jsonl"), "BAD": str(bad), "OUT": str(cache_env / "out.jsonl")}
    args = [paths.get(a, a) for a in args]
    message = message.replace("MISSING", paths["MISSING"]).replace("BAD", paths["BAD"])
    assert message in failed(sg_in(*args), 2)
    assert not (cache_env / "out.jsonl").exists()


def test_cache_errors_are_one_line_failures(cache_env, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_MAX_MB", "lots")
    assert "SOFTGEN_CACHE_MAX_MB='lots'" in failed(sg("cache", "prune"), 2)
    monkeypatch.delenv("SOFTGEN_CACHE_MAX_MB")
    assert "cannot write" in failed(sg("cache", "export", str(cache_env / "no" / "dir" / "f.jsonl")), 1)


def test_a_damaged_tuning_database_is_a_warning_not_a_failure(cache_env):
    db = cache_env / "cache" / "tuning.sqlite"
    db.write_bytes(b"garbage" * 1000)
    for side in ("-wal", "-shm"):
        db.with_name(db.name + side).unlink(missing_ok=True)
    res = sg("cache", "list")
    assert "0 records" in ok(res)
    assert res.stderr.startswith("softgen: warning: the tuning database") and "was damaged" in res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert list(db.parent.glob("tuning.sqlite.corrupt-*"))
