"""softgen.backends.tvm_adapter: TIR -> ELF object with a plain C ABI -> .so with a C wrapper, no TVM
runtime at load time; runs natively (avx2) and under qemu (aarch64)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("tvm")

from softgen.backends import tvm_adapter as ta  # noqa: E402
from softgen.targets import get_target, host_arch, host_supports  # noqa: E402

ok, why = ta.available()
if not ok:
    pytest.skip(why, allow_module_level=True)

# Exploration helpers: the C prototype, LLVM IR and TIR text of a function, for these tests only.
_C_TYPES = {"float32": "float", "float64": "double", "int64": "int64_t", "int32": "int32_t"}


def c_prototype(func) -> str:
    """The C declaration of a C-ABI PrimFunc: ``void sym(float *x, float *y, int64_t n);``."""
    tvm = ta._tvm()
    args = []
    for p in func.params:
        if isinstance(p.ty, tvm.ir.PointerType):
            args.append(f"{_C_TYPES[str(p.ty.element_type)]} *{p.name}")
        else:
            args.append(f"{_C_TYPES[str(p.ty)]} {p.name}")
    return f"void {func.attrs['global_symbol']}({', '.join(args) or 'void'});"


def llvm_ir(func, target) -> str:
    return ta.build(func, target).inspect_source("ll")


def lowered_tir(func, target) -> str:
    """TVMScript of what reaches LLVM."""
    return ta.lower(func, target).script()

# x * 2 + 1 over strided rows, sblock TIR: main loop (n // 32 * 32, scheduled below) + scalar tail.
AXPB = '''
@T.prim_func(s_tir=True)
def axpb(x: T.handle("float32"), y: T.handle("float32"), rows: T.int64, n: T.int64,
         ldx: T.int64, ldy: T.int64):
    T.func_attr({"global_symbol": "axpb_body"})
    X = T.decl_buffer((rows, n), "float32", data=x, strides=(ldx, 1))
    Y = T.decl_buffer((rows, n), "float32", data=y, strides=(ldy, 1))
    for r in range(rows):
        for i in range(n // 32 * 32):
            with T.sblock("main"):
                vr, vi = T.axis.remap("SS", [r, i])
                Y[vr, vi] = X[vr, vi] * T.float32(2) + T.float32(1)
        for i in range(n % 32):
            with T.sblock("tail"):
                vr = T.axis.spatial(rows, r)
                vi = T.axis.spatial(n, n // 32 * 32 + i)
                Y[vr, vi] = X[vr, vi] * T.float32(2) + T.float32(1)
'''

# y = x - max(row): a max-reduction with 4 vector accumulators, then a vectorized shift.
MAXSHIFT = '''
@T.prim_func
def maxshift(x: T.handle("float32"), y: T.handle("float32"), rows: T.int64, n: T.int64,
             ldx: T.int64, ldy: T.int64):
    T.func_attr({"global_symbol": "maxshift_body"})
    X = T.decl_buffer((rows * ldx,), "float32", data=x)
    Y = T.decl_buffer((rows * ldy,), "float32", data=y)
    acc = T.alloc_buffer((32,), "float32", scope="local")
    m = T.alloc_buffer((1,), "float32", scope="local")
    for r in range(rows):
        for l in T.vectorized(32):
            acc[l] = T.float32("-inf")
        for i0 in range(n // 32):
            for j in T.unroll(4):
                for l in T.vectorized(8):
                    acc[j * 8 + l] = T.max(acc[j * 8 + l], X[r * ldx + i0 * 32 + j * 8 + l])
        for i in range(n % 32):
            acc[i] = T.max(acc[i], X[r * ldx + n // 32 * 32 + i])
        m[0] = T.float32("-inf")
        for l in range(32):
            m[0] = T.max(m[0], acc[l])
        for i0 in range(n // 32):
            for j in T.unroll(4):
                for l in T.vectorized(8):
                    Y[r * ldy + i0 * 32 + j * 8 + l] = X[r * ldx + i0 * 32 + j * 8 + l] - m[0]
        for i in range(n % 32):
            Y[r * ldy + n // 32 * 32 + i] = X[r * ldx + n // 32 * 32 + i] - m[0]
'''

# One row: reinterpret, shifts, a guaranteed fma, selects; the tail is one masked vector op (x * 3).
IDIOMS = '''
@T.prim_func
def idioms(x: T.handle("float32"), y: T.handle("float32"), n: T.int64):
    T.func_attr({"global_symbol": "idioms_body"})
    X = T.decl_buffer((n,), "float32", data=x)
    Y = T.decl_buffer((n,), "float32", data=y)
    for i0 in range(n // 8):
        for l in T.vectorized(8):
            v: T.let[T.float32] = X[i0 * 8 + l]
            bits: T.let[T.int32] = T.reinterpret("int32", v)
            e: T.let[T.int32] = T.bitwise_and(T.shift_right(bits, 23), 255)
            p2: T.let[T.float32] = T.reinterpret("float32", T.shift_left(e + 1, 22))
            f: T.let[T.float32] = T.call_llvm_pure_intrin("float32", "llvm.fma", v, T.float32(1.7),
                                                           T.float32(0.3))
            Y[i0 * 8 + l] = T.Select(v > T.float32(0), f, p2) + T.Select(
                v < T.float32(-1), T.float32(100), T.float32(0))
    if n % 8 != 0:
        base: T.let[T.int64] = n // 8 * 8
        t: T.let[T.float32x8] = T.call_llvm_pure_intrin(
            "float32x8", "llvm.masked.load", T.address_of(X[base]),
            T.Ramp(T.int64(0), T.int64(1), 8) < T.Broadcast(n - base, 8), T.Broadcast(T.float32(0), 8))
        T.evaluate(T.call_llvm_intrin(
            "void", "llvm.masked.store", t * T.Broadcast(T.float32(3), 8), T.address_of(Y[base]),
            T.Ramp(T.int64(0), T.int64(1), 8) < T.Broadcast(n - base, 8)))
'''


def axpb_scheduled():
    import tvm
    func = ta.parse_tir(AXPB, s_tir=True)
    sch = tvm.s_tir.Schedule(func)
    _, i = sch.get_loops(sch.get_sblock("main"))
    _, iu, iv = sch.split(i, factors=[None, 4, 8])     # exact: the extent is n // 32 * 32
    sch.unroll(iu)
    sch.vectorize(iv)
    return sch.mod["main"]


def maxshift():
    return ta.parse_tir(MAXSHIFT)


def idioms():
    return ta.parse_tir(IDIOMS)


# The public C ABI of a row op; the TVM function is called per call (rows loop in TIR) or per row.
WRAPPER = r'''
#include <stddef.h>
#include <stdint.h>
%(proto)s
__attribute__((visibility("default")))
int %(name)s(const float *x, float *y, size_t rows, size_t n, size_t ldx, size_t ldy) {
    if (rows == 0 || n == 0) return 0;
    if (!x || !y) return 1;
    if (ldx < n || ldy < n) return 2;
    size_t ld = ldx > ldy ? ldx : ldy;
    if (ld > (size_t)INT64_MAX / rows) return 3;
%(call)s
    return 0;
}
'''
CALL_ALL_ROWS = "    %s((float *)x, y, (int64_t)rows, (int64_t)n, (int64_t)ldx, (int64_t)ldy);"
CALL_PER_ROW = ("    for (size_t r = 0; r < rows; r++)\n"
                "        %s((float *)(x + r * ldx), y + r * ldy, (int64_t)n);")

# Loads the .so with dlopen (libc + libm only) and checks every op against a C reference.
DRIVER = r'''
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int (*fn)(const float *, float *, size_t, size_t, size_t, size_t);

static float ref_idioms(float v, size_t i, size_t n) {
    if (i >= n / 8 * 8) return v * 3.0f;
    int32_t b; memcpy(&b, &v, 4);
    int32_t e = (((b >> 23) & 255) + 1) << 22; float p2; memcpy(&p2, &e, 4);
    return (v > 0.0f ? fmaf(v, 1.7f, 0.3f) : p2) + (v < -1.0f ? 100.0f : 0.0f);
}

int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 2; }
    const char *op = argv[2];
    fn f = (fn)dlsym(h, op);
    if (!f) { printf("dlsym %s failed\n", op); return 2; }
    long bad = 0, checked = 0;
    for (int inplace = 0; inplace < 2; inplace++)
    for (size_t n = 0; n < 100; n++) {
        size_t rows = 3, ldx = n + (n % 3), ldy = inplace ? ldx : n + 1;
        float *x = malloc(sizeof(float) * (rows * ldx + 1)), *x0 = malloc(sizeof(float) * (rows * ldx + 1));
        float *y = inplace ? x : malloc(sizeof(float) * (rows * ldy + 1));
        for (size_t i = 0; i < rows * ldx; i++) x[i] = x0[i] = ((float)((i * 37 + n) % 101) - 50.0f) * 0.37f;
        if (f(x, y, rows, n, ldx, ldy)) { bad++; printf("error code n=%zu\n", n); }
        for (size_t r = 0; r < rows; r++) {
            float m = -INFINITY;
            for (size_t i = 0; i < n; i++) if (x0[r * ldx + i] > m) m = x0[r * ldx + i];
            for (size_t i = 0; i < n; i++) {
                float v = x0[r * ldx + i], want;
                if (!strcmp(op, "axpb")) want = v * 2.0f + 1.0f;
                else if (!strcmp(op, "maxshift")) want = v - m;
                else want = ref_idioms(v, i, n);
                float got = y[r * ldy + i];
                checked++;
                if (memcmp(&got, &want, 4)) { if (bad < 5) printf("%s n=%zu r=%zu i=%zu got %a want %a\n", op, n, r, i, got, want); bad++; }
            }
        }
        free(x); free(x0); if (!inplace) free(y);
    }
    if (f(NULL, NULL, 1, 1, 1, 1) != 1 || f(NULL, NULL, 0, 5, 5, 5) != 0) bad++;
    printf("%s checked=%ld bad=%ld\n", op, checked, bad);
    return bad != 0;
}
'''

ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
CASES = {"axpb": (axpb_scheduled, CALL_ALL_ROWS), "maxshift": (maxshift, CALL_ALL_ROWS),
         "idioms": (idioms, CALL_PER_ROW)}


def _elf_machine(path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def _cc(arch: str):
    if arch == host_arch():
        return shutil.which("gcc") or shutil.which("cc")
    return shutil.which(f"{arch}-linux-gnu-gcc")


def _link(tmp_path, name: str, target: str):
    t = get_target(target)
    cc = _cc(t.arch)
    if cc is None:
        pytest.skip(f"no C compiler for {t.arch} (apt-get install gcc-{t.arch}-linux-gnu)")
    make, call = CASES[name]
    func = make()
    obj = ta.compile_to_object(func, target, tmp_path / f"{name}_{target}.o")
    src = tmp_path / f"{name}_wrap.c"
    sym = str(func.attrs["global_symbol"])
    src.write_text(WRAPPER % {"proto": c_prototype(func), "name": name, "call": call % sym})
    vs = tmp_path / f"{name}.map"
    vs.write_text(ta.version_script([name]))
    lib = tmp_path / f"lib{name}_{target}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), str(obj),
                    f"-Wl,--version-script={vs}"], check=True, capture_output=True, text=True)
    return lib, cc


def _driver(tmp_path, cc: str, arch: str):
    exe = tmp_path / f"driver_{arch}"
    if not exe.exists():
        src = tmp_path / "driver.c"
        src.write_text(DRIVER)
        subprocess.run([cc, "-O1", "-o", str(exe), str(src), "-ldl", "-lm"], check=True,
                       capture_output=True, text=True)
    return exe


def _run(tmp_path, name: str, target: str):
    t = get_target(target)
    lib, cc = _link(tmp_path, name, target)
    exe = _driver(tmp_path, cc, t.arch)
    if t.arch == host_arch():
        if not host_supports(t):
            pytest.skip(f"this CPU cannot run {target}")
        argv = [str(exe)]
    else:
        qemu = shutil.which(f"qemu-{t.arch}-static") or shutil.which(f"qemu-{t.arch}")
        if qemu is None:
            pytest.skip("qemu-user-static is not installed")
        argv = [qemu, "-L", f"/usr/{t.arch}-linux-gnu", str(exe)]
    r = subprocess.run(argv + [str(lib), name], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bad=0" in r.stdout
    return lib


# -- tests ---------------------------------------------------------------------------------------

def test_available_and_targets():
    assert ok and "0.27" in why
    assert ta.llvm_target("avx2") == {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu",
                                      "mcpu": "haswell", "mattr": ["+avx2", "+fma"]}
    assert ta.llvm_target("neon") == {"kind": "llvm", "mtriple": "aarch64-unknown-linux-gnu",
                                      "mcpu": "generic", "mattr": ["+neon", "+fp-armv8"]}
    assert ta.llvm_target("avx512")["mattr"][:2] == ["+avx512f", "+avx512bw"]
    scalar = ta.llvm_target("scalar")
    assert scalar["mtriple"].startswith(host_arch()) and "mattr" not in scalar
    assert ta.llvm_target({"triple": "", "cpu": "", "features": "", "arch": "aarch64"})["mtriple"] \
        == "aarch64-unknown-linux-gnu"
    assert ta.tvm_target("neon").kind.name == "llvm"


def test_softgen_imports_without_tvm():
    code = ("import sys; sys.modules['tvm'] = None; sys.modules['tvm_ffi'] = None\n"
            "import softgen\nfrom softgen.backends import tvm_adapter as ta\n"
            "ok, why = ta.available(); assert not ok and \"pip install '.[tvm]'\" in why, why\n"
            "try:\n    ta.tvm_target('avx2')\nexcept ta.TVMUnavailable:\n    print('unavailable')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "unavailable" in r.stdout, r.stderr


def test_packed_abi_is_what_tvm_compile_gives(tmp_path):
    """Without calling_conv=1 the function is TVM-FFI packed and needs libtvm_ffi at load time."""
    import tvm
    ex = tvm.compile(ta.parse_tir(IDIOMS), target=ta.llvm_target("avx2"))
    o = tmp_path / "packed.o"
    ex.mod.write_to_file(str(o))
    nm = subprocess.run(["nm", str(o)], capture_output=True, text=True, check=True).stdout
    assert re.search(r" T __tvm_ffi_idioms_body$", nm, re.M)
    assert re.search(r" U TVMFFIErrorSetRaisedFromCStrParts$", nm, re.M)


def test_c_abi_prototype_and_lowering():
    f = maxshift()
    assert c_prototype(f) == ("void maxshift_body(float *x, float *y, int64_t rows, int64_t n, "
                                 "int64_t ldx, int64_t ldy);")
    low = lowered_tir(f, "avx2")
    assert '"calling_conv": 1' in low and "TVMBackend" not in low
    assert "T.Ramp" in lowered_tir(axpb_scheduled(), "avx2")
    with pytest.raises(ValueError, match="buffer"):
        ta.as_c_abi(ta.parse_tir('''
@T.prim_func
def f(x: T.handle, n: T.int64):
    X = T.match_buffer(x, (n,), "float32")
    for i in range(n):
        X[i] = X[i] + T.float32(1)
'''), "f")


@pytest.mark.parametrize("target", ["avx2", "neon"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_object(tmp_path, name, target):
    make, _ = CASES[name]
    t0 = time.perf_counter()
    obj = ta.compile_to_object(make(), target, tmp_path / "k.o")
    dt = time.perf_counter() - t0
    assert dt < 10, dt
    assert _elf_machine(obj) == ELF_MACHINE[get_target(target).arch]
    if shutil.which("nm"):
        und = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True)
        assert und.stdout.strip() == "", und.stdout       # nothing from the TVM runtime (or libm)


def test_vectorized_asm():
    a = ta.assembly(axpb_scheduled(), "avx2")
    assert re.search(r"vfmadd\w*ps\s+.*ymm|vmovups\s+%ymm", a)
    m = ta.assembly(maxshift(), "avx2")
    dests = set(re.findall(r"vmaxps\s+[^,]+,\s*%(ymm\d+),\s*%ymm\d+", m))
    assert len(dests) >= 4, dests                          # four independent accumulators
    i = ta.assembly(idioms(), "avx2")
    for ins in ("vblendvps", "vfmadd", "vmaskmovps", r"vpsrad\s|vpsrld\s", r"vpslld\s", "ymm"):
        assert re.search(ins, i), ins
    n = ta.assembly(maxshift(), "neon")
    assert re.search(r"v\d+\.4s", n) and re.search(r"ldp\s+q\d+", n)
    assert re.search(r"fmla\s+v\d+\.4s|fmadd", ta.assembly(idioms(), "neon"))
    ir = llvm_ir(idioms(), "neon")
    assert "aarch64-unknown-linux-gnu" in ir and "<8 x float>" in ir          # legalised to 2 x 4s by the backend


@pytest.mark.parametrize("name", sorted(CASES))
def test_shared_library_native(tmp_path, name):
    if host_arch() != "x86_64":
        pytest.skip("the native case is x86_64 avx2")
    lib = _run(tmp_path, name, "avx2")
    d = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "tvm" not in d.lower()
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", d)
    assert set(needed) <= {"libc.so.6", "libm.so.6"}, needed
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                              text=True, check=True).stdout
    assert re.findall(r" T (\S+)", exported) == [name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_shared_library_aarch64_qemu(tmp_path, name):
    lib = _run(tmp_path, name, "neon")
    assert _elf_machine(lib) == ELF_MACHINE["aarch64"]
    tool = shutil.which("aarch64-linux-gnu-readelf") or "readelf"
    d = subprocess.run([tool, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "tvm" not in d.lower()
