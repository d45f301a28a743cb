/* softgen._fastcall: call a generated row kernel on two buffers with ~0.1 us of overhead.
 * An array is a buffer (NumPy) or a (address, shape, strides, format) tuple (get_view).
 *
 * ctypes costs about 1 us per call plus the pointer look-ups; this does the layout checks of
 * Kernel._run for the common case (float32, rows addressable as base + r*ld, aligned, x and y
 * identical or disjoint) straight on the buffer protocol. Anything else returns NotImplemented
 * and Python takes the general path, which copies or raises the proper error. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

typedef int (*row_kernel)(const float *, float *, size_t, size_t, size_t, size_t);
typedef int (*row_kernel_mt)(const float *, float *, size_t, size_t, size_t, size_t, int);

/* rows, n and the row stride (elements) of a float32 buffer; 0 if it needs the general path. */
static int layout(const Py_buffer *b, size_t *rows, size_t *n, size_t *ld) {
    if (b->itemsize != 4 || b->format == NULL || strcmp(b->format, "f") != 0 || b->ndim < 1)
        return 0;
    if (((uintptr_t)b->buf & 3u) != 0)
        return 0;
    Py_ssize_t last = b->shape[b->ndim - 1];
    if (last > 1 && b->strides[b->ndim - 1] != 4)
        return 0;
    size_t r = 1;
    Py_ssize_t stride = -1, expect = -1;
    for (int i = b->ndim - 2; i >= 0; i--) {        /* leading axes must collapse to one stride */
        Py_ssize_t s = b->shape[i], st = b->strides[i];
        r *= (size_t)s;
        if (s == 1)
            continue;
        if (stride < 0) {
            if (st <= 0 || st % 4)
                return 0;
            stride = st;
        } else if (st != expect) {
            return 0;
        }
        expect = st * s;
    }
    *rows = r;
    *n = (size_t)last;
    *ld = stride < 0 ? (size_t)last : (size_t)(stride / 4);
    return *ld >= *n;
}

#define VIEW_MAXDIM 32

/* An array argument: a buffer (NumPy), or a tuple (address, shape, strides in elements, format)
 * that the caller built from an array it has checked (issue 15: torch tensors by data_ptr(),
 * shape and stride(), without a NumPy view per call). A tuple's shape and strides go to
 * `store` (2 * VIEW_MAXDIM); b->obj stays NULL, so PyBuffer_Release is a no-op for it.
 * 0 and no error set when it is neither (the caller returns NotImplemented). */
static int get_view(PyObject *o, Py_buffer *b, int flags, Py_ssize_t *store) {
    if (!PyTuple_CheckExact(o))
        return PyObject_GetBuffer(o, b, flags) < 0 ? (PyErr_Clear(), 0) : 1;
    if (PyTuple_GET_SIZE(o) != 4)
        return 0;
    PyObject *shape = PyTuple_GET_ITEM(o, 1), *strides = PyTuple_GET_ITEM(o, 2);
    const char *format = PyUnicode_Check(PyTuple_GET_ITEM(o, 3)) ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(o, 3)) : NULL;
    if (!PyTuple_Check(shape) || !PyTuple_Check(strides) || format == NULL
        || PyTuple_GET_SIZE(shape) != PyTuple_GET_SIZE(strides) || PyTuple_GET_SIZE(shape) > VIEW_MAXDIM) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t itemsize = strcmp(format, "f") == 0 ? 4 : strcmp(format, "q") == 0 ? 8 : 0;
    void *buf = PyLong_AsVoidPtr(PyTuple_GET_ITEM(o, 0));
    if (itemsize == 0 || PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    memset(b, 0, sizeof *b);
    b->buf = buf;
    b->ndim = (int)PyTuple_GET_SIZE(shape);
    b->itemsize = itemsize;
    b->format = (char *)format;
    b->shape = store;
    b->strides = store + VIEW_MAXDIM;
    for (int i = 0; i < b->ndim; i++) {
        b->shape[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        b->strides[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(strides, i)) * itemsize;
        if (PyErr_Occurred() || b->shape[i] < 0) {
            PyErr_Clear();
            return 0;
        }
    }
    if (flags & PyBUF_C_CONTIGUOUS) {   /* what GetBuffer would refuse for such a request */
        Py_ssize_t expect = itemsize;
        for (int i = b->ndim - 1; i >= 0; i--) {
            if (b->shape[i] > 1 && b->strides[i] != expect)
                return 0;
            expect *= b->shape[i];
        }
    }
    return 1;
}

/* x (args[1]) and y (args[2], writable) of a kernel taking (x, y, rows, n, ldx, ldy, ...): -1 when
   they are not buffers (nothing held), else both held and 1 when the fast path may run (the same
   shape of at least `min_ndim` axes, each with layout(), x and y identical or disjoint), 0 when not. */
static int xy_pair(PyObject *const *args, Py_buffer *bx, Py_buffer *by, int min_ndim,
                   size_t *rows, size_t *n, size_t *ldx, size_t *ldy, Py_ssize_t *store) {
    if (!get_view(args[1], bx, PyBUF_STRIDES | PyBUF_FORMAT, store))
        return -1;
    if (!get_view(args[2], by, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE, store + 2 * VIEW_MAXDIM)) {
        PyBuffer_Release(bx);
        return -1;
    }
    size_t rows_y, n_y;
    int ok = bx->ndim >= min_ndim && layout(bx, rows, n, ldx) && layout(by, &rows_y, &n_y, ldy)
             && bx->ndim == by->ndim && memcmp(bx->shape, by->shape, sizeof(Py_ssize_t) * bx->ndim) == 0;
    if (ok && bx->buf != by->buf && *rows && *n) {   /* partial overlap: general path copies */
        const char *x0 = bx->buf, *x1 = x0 + 4 * ((*rows - 1) * *ldx + *n);
        const char *y0 = by->buf, *y1 = y0 + 4 * ((*rows - 1) * *ldy + *n);
        ok = x1 <= y0 || y1 <= x0;
    }
    return ok && !(bx->buf == by->buf && *ldx != *ldy);
}

/* Calls of at least this many elements run without the GIL (shorter ones keep it: releasing and
 * taking it back costs about what a 16K-element call saves other Python threads). */
#define GIL_FREE_ELEMENTS 16384
#define RUN_KERNEL(elements, stmt)                       \
    do {                                                 \
        if ((elements) >= GIL_FREE_ELEMENTS) {           \
            Py_BEGIN_ALLOW_THREADS stmt; Py_END_ALLOW_THREADS \
        } else {                                         \
            stmt;                                        \
        }                                                \
    } while (0)

/* The kernel entry point args[0] of a call with lo..hi arguments; NULL with an exception set
 * (a TypeError naming ``usage`` for a wrong count, a ValueError for a null pointer). */
static void *entry_point(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi,
                         const char *usage) {
    if (nargs < lo || nargs > hi) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    void *fp = PyLong_AsVoidPtr(args[0]);
    if (fp == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a null kernel entry point");
    return fp;
}

static PyObject *call(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    void *fp = entry_point(args, nargs, 3, 4, "call(fnptr, x, y[, threads])");
    if (fp == NULL)
        return NULL;
    int threads = 0;                                /* 4 arguments: fnptr is <name>_mt */
    if (nargs == 4) {
        long t = PyLong_AsLong(args[3]);
        if (t == -1 && PyErr_Occurred())
            return NULL;
        if (t < INT_MIN || t > INT_MAX) {
            PyErr_SetString(PyExc_OverflowError, "threads does not fit a C int");
            return NULL;
        }
        threads = (int)t;
    }
    Py_buffer bx, by;
    Py_ssize_t store[4 * VIEW_MAXDIM];
    size_t rows = 0, n = 0, ldx = 0, ldy = 0;
    const int ok = xy_pair(args, &bx, &by, 1, &rows, &n, &ldx, &ldy, store);
    if (ok < 0)
        Py_RETURN_NOTIMPLEMENTED;
    int rc = 0;
    if (ok && rows && n) {
        RUN_KERNEL(rows * n, rc = nargs == 4 ? ((row_kernel_mt)fp)(bx.buf, by.buf, rows, n, ldx, ldy, threads)
                                         : ((row_kernel)fp)(bx.buf, by.buf, rows, n, ldx, ldy));
    }
    PyBuffer_Release(&by);
    PyBuffer_Release(&bx);
    if (!ok)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromLong(rc);
}

typedef int (*unary_kernel)(const float *, float *, size_t, size_t, size_t, size_t, size_t);

/* A unary matrix kernel (sinkhorn, newton_pinv...): x and y as for call(), at least two axes;
 * rows = batch * m, m = x.shape[-2] (issue 15: matrix calls). */
static PyObject *unary(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    void *fp = entry_point(args, nargs, 3, 3, "unary(fnptr, x, y)");
    if (fp == NULL)
        return NULL;
    Py_buffer bx, by;
    Py_ssize_t store[4 * VIEW_MAXDIM];
    size_t rows = 0, n = 0, ldx = 0, ldy = 0;
    const int ok = xy_pair(args, &bx, &by, 2, &rows, &n, &ldx, &ldy, store);
    if (ok < 0)
        Py_RETURN_NOTIMPLEMENTED;
    size_t m = ok ? (size_t)bx.shape[bx.ndim - 2] : 0;
    int rc = 0;
    if (ok && rows && n) {
        RUN_KERNEL(rows * n, rc = ((unary_kernel)fp)(bx.buf, by.buf, rows, n, ldx, ldy, m));
    }
    PyBuffer_Release(&by);
    PyBuffer_Release(&bx);
    if (!ok)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromLong(rc);
}

typedef int (*selected_kernel)(const float *, int64_t *, float *, size_t, size_t, size_t, size_t);

/* A selected (top-k) kernel: x as for call(); indices (int64) and weights (float32) C-contiguous,
 * of shape x.shape[:-1] + (m,), m = min(k, n) decided by the caller (issue 15: top-k calls). */
static PyObject *selected(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    void *fp = entry_point(args, nargs, 4, 4, "selected(fnptr, x, indices, weights)");
    if (fp == NULL)
        return NULL;
    Py_buffer bx, bi, bw;
    Py_ssize_t store[6 * VIEW_MAXDIM];
    if (!get_view(args[1], &bx, PyBUF_STRIDES | PyBUF_FORMAT, store))
        Py_RETURN_NOTIMPLEMENTED;
    if (!get_view(args[2], &bi, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE, store + 2 * VIEW_MAXDIM)) {
        PyBuffer_Release(&bx);
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (!get_view(args[3], &bw, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE, store + 4 * VIEW_MAXDIM)) {
        PyBuffer_Release(&bi);
        PyBuffer_Release(&bx);
        Py_RETURN_NOTIMPLEMENTED;
    }
    size_t rows = 0, n = 0, ldx = 0;
    int ok = layout(&bx, &rows, &n, &ldx) && bi.itemsize == 8 && bi.format != NULL
             && (strcmp(bi.format, "q") == 0 || strcmp(bi.format, "l") == 0)
             && bw.itemsize == 4 && bw.format != NULL && strcmp(bw.format, "f") == 0
             && bi.ndim == bx.ndim && bw.ndim == bx.ndim
             && memcmp(bi.shape, bx.shape, sizeof(Py_ssize_t) * (bx.ndim - 1)) == 0
             && memcmp(bw.shape, bx.shape, sizeof(Py_ssize_t) * (bx.ndim - 1)) == 0
             && bi.shape[bx.ndim - 1] == bw.shape[bx.ndim - 1]
             && ((uintptr_t)bi.buf & 7u) == 0 && ((uintptr_t)bw.buf & 3u) == 0;
    size_t m = ok ? (size_t)bw.shape[bx.ndim - 1] : 0;
    int rc = 0;
    if (ok && rows && n && m) {
        RUN_KERNEL(rows * n, rc = ((selected_kernel)fp)(bx.buf, bi.buf, bw.buf, rows, n, ldx, m));
    }
    PyBuffer_Release(&bw);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&bx);
    if (!ok)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromLong(rc);
}

#define GENERAL_MAXIN 4
#define GENERAL_MAXDIMS 6
#define GENERAL_MAXARGS (2 * GENERAL_MAXIN + GENERAL_MAXDIMS + 3)
typedef size_t z;   /* every argument of a general entry is a pointer or a size_t: one register class */

/* The general matrix ABI's entry (inputs..., out, batch, dims..., ld inputs..., ld out) with `na`
 * arguments, each passed as a size_t (pointers are 64-bit integers on every target softgen runs). */
static int call_general(void *fp, int na, const z *a) {
    switch (na) {
    case 7: return ((int (*)(z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    case 8: return ((int (*)(z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    case 9: return ((int (*)(z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    case 10: return ((int (*)(z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                                               a[8], a[9]);
    case 11: return ((int (*)(z, z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                                                  a[8], a[9], a[10]);
    case 12: return ((int (*)(z, z, z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                                                                     a[7], a[8], a[9], a[10], a[11]);
    case 13: return ((int (*)(z, z, z, z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5], a[6],
                                                                        a[7], a[8], a[9], a[10], a[11], a[12]);
    case 14: return ((int (*)(z, z, z, z, z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5],
                                                                           a[6], a[7], a[8], a[9], a[10], a[11],
                                                                           a[12], a[13]);
    case 15: return ((int (*)(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4], a[5],
                                                                              a[6], a[7], a[8], a[9], a[10], a[11],
                                                                              a[12], a[13], a[14]);
    case 16: return ((int (*)(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4],
                                                                                 a[5], a[6], a[7], a[8], a[9],
                                                                                 a[10], a[11], a[12], a[13], a[14],
                                                                                 a[15]);
    case 17: return ((int (*)(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z))fp)(a[0], a[1], a[2], a[3], a[4],
                                                                                    a[5], a[6], a[7], a[8], a[9],
                                                                                    a[10], a[11], a[12], a[13],
                                                                                    a[14], a[15], a[16]);
    default: return -1;
    }
}

/* A general matrix kernel (gaussian_kernel, attention...: several inputs, one output; issue 15:
 * matrix calls). spec: (ndims, row dim, col dim of each input, then of the output), indices into
 * the kernel's dims; inputs: a tuple of arrays; y: the output. Every array float32 with the same
 * leading axes, its matrices' rows one stride apart, y disjoint from the inputs; else
 * NotImplemented and the general path copies or raises. */
static PyObject *general(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    void *fp = entry_point(args, nargs, 4, 4, "general(fnptr, spec, inputs, y)");
    if (fp == NULL)
        return NULL;
    if (!PyTuple_Check(args[1]) || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "general(fnptr, spec, inputs, y): spec and inputs are tuples");
        return NULL;
    }
    const Py_ssize_t nin = PyTuple_GET_SIZE(args[2]);
    PyObject *spec = args[1];
    if (nin < 1 || nin > GENERAL_MAXIN || PyTuple_GET_SIZE(spec) != 1 + 2 * (nin + 1))
        Py_RETURN_NOTIMPLEMENTED;
    const long nd = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
    if (nd < 1 || nd > GENERAL_MAXDIMS) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_buffer b[GENERAL_MAXIN + 1];
    Py_ssize_t store[(GENERAL_MAXIN + 1) * 2 * VIEW_MAXDIM];
    size_t dims[GENERAL_MAXDIMS], ld[GENERAL_MAXIN + 1], rows, n, total = 0;
    char known[GENERAL_MAXDIMS] = {0};
    int held = 0, ok = 1;
    for (Py_ssize_t i = 0; i <= nin && ok; i++) {
        PyObject *o = i < nin ? PyTuple_GET_ITEM(args[2], i) : args[3];
        int flags = PyBUF_STRIDES | PyBUF_FORMAT | (i == nin ? PyBUF_WRITABLE : 0);
        if (!get_view(o, &b[i], flags, store + i * 2 * VIEW_MAXDIM)) {
            ok = 0;
            break;
        }
        held++;
        Py_buffer *v = &b[i];
        ok = v->ndim >= 2 && v->ndim == b[0].ndim && layout(v, &rows, &n, &ld[i]) && rows && n
             && memcmp(v->shape, b[0].shape, sizeof(Py_ssize_t) * (v->ndim - 2)) == 0;
        for (int j = 0; j < 2 && ok; j++) {   /* its row and column dims agree with the others' */
            long d = PyLong_AsLong(PyTuple_GET_ITEM(spec, 1 + 2 * i + j));
            size_t size = (size_t)v->shape[v->ndim - 2 + j];
            if (d < 0 || d >= nd) {
                PyErr_Clear();
                ok = 0;
            } else if (known[d]) {
                ok = dims[d] == size;
            } else {
                known[d] = 1;
                dims[d] = size;
            }
        }
        total += rows * n;
    }
    for (long d = 0; d < nd && ok; d++)
        ok = known[d];
    for (Py_ssize_t i = 0; i < nin && ok; i++) {   /* y overlapping an input: the general path copies */
        size_t ri = (size_t)b[i].shape[b[i].ndim - 2], ro = (size_t)b[nin].shape[b[nin].ndim - 2];
        size_t batch = 1;
        for (int k = 0; k < b[0].ndim - 2; k++)
            batch *= (size_t)b[0].shape[k];
        const char *x0 = b[i].buf, *x1 = x0 + 4 * ((batch * ri - 1) * ld[i] + (size_t)b[i].shape[b[i].ndim - 1]);
        const char *y0 = b[nin].buf, *y1 = y0 + 4 * ((batch * ro - 1) * ld[nin] + (size_t)b[nin].shape[b[nin].ndim - 1]);
        ok = x1 <= y0 || y1 <= x0;
    }
    int rc = 0;
    if (ok) {
        z a[GENERAL_MAXARGS];
        int na = 0;
        size_t batch = 1;
        for (int k = 0; k < b[0].ndim - 2; k++)
            batch *= (size_t)b[0].shape[k];
        for (Py_ssize_t i = 0; i <= nin; i++)
            a[na++] = (z)(uintptr_t)b[i].buf;
        a[na++] = batch;
        for (long d = 0; d < nd; d++)
            a[na++] = dims[d];
        for (Py_ssize_t i = 0; i <= nin; i++)
            a[na++] = ld[i];
        RUN_KERNEL(total, rc = call_general(fp, na, a));
    }
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&b[i]);
    if (!ok)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromLong(rc);
}

static PyMethodDef methods[] = {
    {"general", (PyCFunction)(void (*)(void))general, METH_FASTCALL,
     "general(fnptr, spec, inputs, y) -> int return code, or NotImplemented for the general path: "
     "a general matrix kernel; spec = (ndims, row and column dim of each input, then of y)"},
    {"unary", (PyCFunction)(void (*)(void))unary, METH_FASTCALL,
     "unary(fnptr, x, y) -> int return code, or NotImplemented for the general path: a unary "
     "matrix kernel on (..., m, n) arrays"},
    {"selected", (PyCFunction)(void (*)(void))selected, METH_FASTCALL,
     "selected(fnptr, x, indices, weights) -> int return code, or NotImplemented for the general "
     "path: a top-k kernel; indices/weights C-contiguous of shape x.shape[:-1] + (min(k, n),)"},
    {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL,
     "call(fnptr, x, y[, threads]) -> int return code, or NotImplemented for the general path; "
     "with threads, fnptr is the extended entry <name>_mt"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcall", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastcall(void) { return PyModule_Create(&module); }
