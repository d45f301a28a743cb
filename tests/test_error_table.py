"""The one table of return codes (softgen/abi.py): everything that states a code reads it.

The numbers are the C ABI, so they are also pinned here literally: renumbering a code is an ABI
break, not a refactoring."""
import re

import pytest

import softgen
from softgen import abi
from softgen._data import data_dir
from softgen.export import error_codes

ABI_TEMPLATES = ["entry.c.j2", "matrix_entry.c.j2", "supported.c.j2", "gemm_tu.c.j2"]


def test_table_numbers_and_names_are_the_abi():
    assert [(e.code, e.suffix) for e in abi.ERRORS] == [
        (0, "OK"), (1, "ENULL"), (2, "ESTRIDE"), (3, "EOVERFLOW"), (4, "ETOOLONG"), (5, "EMATRIX"),
        (6, "ENOMEM"), (7, "ESQUARE"), (8, "ECPU"), (9, "ETHREADS")]
    assert all(getattr(abi.err, e.suffix) is e and str(e) == str(e.code) for e in abi.ERRORS)


@pytest.mark.parametrize("rc, cls", [(1, RuntimeError), (2, RuntimeError), (3, RuntimeError), (4, ValueError),
                                     (5, ValueError), (6, RuntimeError), (7, ValueError),
                                     (8, softgen.TargetNotSupportedError), (9, softgen.UsageError),
                                     (10, RuntimeError)])
def test_failure_exception_types(rc, cls):
    e = abi.failure("kern", rc)
    assert type(e) is cls and str(e).startswith(f"kern returned error {rc}: ")
    assert str(e).endswith("unknown") == (rc not in abi.BY_CODE)


@pytest.mark.parametrize("kind, codes", [
    (abi.ROW, [0, 1, 2, 3, 8, 9]), (abi.SELECTED, [0, 1, 2, 3, 4, 8, 9]), (abi.UNARY, [0, 1, 2, 3, 5, 6, 8, 9]),
    (abi.GENERAL, [0, 1, 2, 3, 6, 8, 9]), (abi.GEMM, [0, 1, 2, 3, 8]), (abi.ATTENTION, [0, 1, 2, 3, 5, 6, 8, 9])])
def test_codes_each_abi_returns(kind, codes):
    assert [e.code for e in abi.returned(kind, indexes=kind == abi.SELECTED)] == codes
    assert abi.ESQUARE in abi.returned(abi.UNARY, square=True)


@pytest.mark.parametrize("template", ABI_TEMPLATES)
def test_templates_write_no_code_numbers(template):
    """Entry points return ``{{ err.X }}``; the only numeric returns left are the boolean helpers
    of matrix_entry.c.j2 (``__fits``, ``__reserve``), ahead of its entry point."""
    text = (data_dir("templates") / template).read_text()
    if template == "matrix_entry.c.j2":
        text = text[text.index("__checked"):]
    assert not re.findall(r"return\s+\d", text)


def _returns(source: str, fn: str) -> set[int]:
    body = source[re.search(rf"^[^*\n]*\bint {fn}\(", source, re.M).start():]   # the definition
    body = body[:body.index("\n}\n")]
    return {int(v) for v in re.findall(r"return (\d+);", body)}


@pytest.mark.parametrize("op, params, kind", [("softmax", {}, abi.ROW), ("topk_softmax", {"sparse": 1}, abi.SELECTED),
                                              ("newton_pinv", {"variant": "norm"}, abi.UNARY),
                                              ("gaussian_kernel", {}, abi.GENERAL),
                                              ("attention", {"algorithm": "streaming"}, abi.ATTENTION)])
def test_generated_entry_returns_what_the_header_documents(op, params, kind):
    """Every code the generated entry point returns is one its header #defines (error_codes),
    and that set is the table's for the ABI kind. A dispatcher (algorithm="auto") returns what
    its variants return: each of them is checked."""
    k = softgen.compile(op, target="avx2", name=f"et_{kind}", **params)
    documented = error_codes(k)
    for v in k.variants or (k,):
        returned = _returns(v.source, f"{v.name}__checked") | _returns(v.source, v.name)
        if v._abi.kind == abi.ATTENTION:   # its explicit-stride checks sit beside the streaming phase
            returned |= _returns(v.source, f"{v.name}__attn0__all")
        assert returned == set(documented), v.name
    assert set(documented) == {e.code for e in abi.returned(kind, indexes=bool(k._abi.max_n),
                                                             square=k.abi is not None and k.abi.square,
                                                             threads=k._abi.threads)}
    assert all(documented[e.code][0] == e.suffix for e in abi.ERRORS if e.code in documented)
