/* softgen._fastcall: call a generated kernel on its arrays with ~0.1 us of overhead.
 * An array is a NumPy array (its fields read directly: the buffer protocol rebuilds a format
 * string per call, ~60% of a short call), another buffer, a torch.Tensor read here through its
 * own accessors once
 * softgen.arrays has seen torch (set_torch: this module never imports torch), or a
 * (address, shape, strides, format) tuple (get_view).
 *
 * ctypes costs about 1 us per call plus the pointer look-ups; this does the layout checks of
 * Kernel._run for the common case (float32, rows addressable as base + r*ld, aligned, x and y
 * identical or disjoint) straight on the arrays. Anything else returns NotImplemented and Python
 * takes the general path, which copies or raises the proper error. One entry per ABI family
 * (call, selected, unary, general: the raw forms, outputs given), and `entry`: a kernel's
 * callable that also allocates its outputs in the caller's array type (issue 15). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

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

/* The view's shape and strides from two tuples of ints (strides in elements; NULL: C-contiguous)
 * into `store` (2 * VIEW_MAXDIM); b->obj stays NULL, so PyBuffer_Release is a no-op for it. 0 when
 * they are not such tuples or a C-contiguous request does not hold (no error set). */
static int fill_view(Py_buffer *b, void *buf, PyObject *shape, PyObject *strides, Py_ssize_t itemsize,
                     const char *format, int flags, Py_ssize_t *store) {
    if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) > VIEW_MAXDIM
        || (strides != NULL && (!PyTuple_Check(strides) || PyTuple_GET_SIZE(shape) != PyTuple_GET_SIZE(strides))))
        return 0;
    memset(b, 0, sizeof *b);
    b->buf = buf;
    b->ndim = (int)PyTuple_GET_SIZE(shape);
    b->itemsize = itemsize;
    b->format = (char *)format;
    b->shape = store;
    b->strides = store + VIEW_MAXDIM;
    Py_ssize_t expect = itemsize;
    for (int i = b->ndim - 1; i >= 0; i--) {
        b->shape[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        b->strides[i] = strides != NULL ? PyLong_AsSsize_t(PyTuple_GET_ITEM(strides, i)) * itemsize : expect;
        if (PyErr_Occurred() || b->shape[i] < 0) {
            PyErr_Clear();
            return 0;
        }
        /* what GetBuffer would refuse for a C-contiguous request (PyBUF_C_CONTIGUOUS includes PyBUF_STRIDES) */
        if ((flags & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS && b->shape[i] > 1 && b->strides[i] != expect)
            return 0;
        expect *= b->shape[i];
    }
    return 1;
}

/* torch (issue 15): what set_torch registered once softgen.arrays saw a tensor. A tensor is read
 * through torch.Tensor's own accessors, resolved once to their C functions (Acc) and called
 * directly: no attribute lookup, no bound method, no argument tuple, no interpreter. Each accessor
 * costs ~250 instructions at least (torch's error and __torch_function__ guards), so a tensor is
 * read with the fewest that keep every check (~3,800 instructions; the C++ layout behind _cdata
 * would take a few dozen loads but changes between torch versions). Only the exact type: a
 * subclass may override any accessor (it takes the general path). */
typedef struct {
    PyObject *descr;        /* the descriptor, owned */
    getter get;             /* a getset_descriptor's C getter and its closure, or NULL */
    void *closure;
    PyCFunction meth;       /* a method_descriptor's C function, or NULL */
    int flags;              /* its METH_NOARGS or METH_VARARGS | METH_KEYWORDS */
} Acc;

enum { A_DTYPE, A_IS_CPU, A_LAYOUT, A_REQUIRES_GRAD, A_IS_NEG, A_IS_CONTIGUOUS, A_DATA_PTR, A_SHAPE, A_STRIDE, A_N };
static const char *const acc_names[A_N] = {"dtype", "is_cpu", "layout", "requires_grad", "is_neg", "is_contiguous",
                                           "data_ptr", "shape", "stride"};
static const char acc_property[A_N] = {1, 1, 1, 1, 0, 0, 0, 1, 0};   /* else a method, called with no arguments */

static struct {
    PyTypeObject *type;                           /* torch.Tensor */
    PyObject *f32, *i64, *strided, *from_numpy;   /* torch.float32, torch.int64, torch.strided, torch.from_numpy */
    PyObject *no_args;                            /* () for METH_VARARGS methods */
    Acc a[A_N];
} T;

#define IS_TORCH(o) (T.type != NULL && Py_TYPE(o) == T.type)

/* Accessor `i` of tensor `o` (exactly torch.Tensor, a subclass of the descriptor's class, so the
 * descriptor's own type check holds): a new reference, or NULL with an error set. */
static PyObject *tacc(int i, PyObject *o) {
    const Acc *a = &T.a[i];
    if (a->get != NULL)
        return a->get(o, a->closure);
    if (a->meth != NULL)
        return a->flags == METH_NOARGS ? a->meth(o, NULL)
                                       : ((PyCFunctionWithKeywords)(void (*)(void))a->meth)(o, T.no_args, NULL);
    if (acc_property[i])
        return Py_TYPE(a->descr)->tp_descr_get(a->descr, o, (PyObject *)T.type);
    return PyObject_Vectorcall(a->descr, &o, 1, NULL);
}

/* 1 when accessor `i` of tensor `o` is the object `want` (0, no error set, otherwise) */
static int tis(int i, PyObject *o, PyObject *want) {
    PyObject *v = tacc(i, o);
    if (v == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(v);
    return v == want;
}

/* Accessor `i` of `type` resolved from its descriptor `d` (a new reference, stolen): C functions
 * only for a C descriptor of a base of `type` (its own type check then always holds); -1 with an
 * error set when a property is not a descriptor. */
static int acc_set(Acc *a, int i, PyObject *d, PyTypeObject *type) {
    memset(a, 0, sizeof *a);
    a->descr = d;
    const int base = (Py_TYPE(d) == &PyGetSetDescr_Type || Py_TYPE(d) == &PyMethodDescr_Type)
                     && PyType_IsSubtype(type, PyDescr_TYPE(d));
    if (acc_property[i]) {
        if (base && Py_TYPE(d) == &PyGetSetDescr_Type && ((PyGetSetDescrObject *)d)->d_getset->get != NULL) {
            a->get = ((PyGetSetDescrObject *)d)->d_getset->get;
            a->closure = ((PyGetSetDescrObject *)d)->d_getset->closure;
        } else if (Py_TYPE(d)->tp_descr_get == NULL) {
            PyErr_Format(PyExc_TypeError, "set_torch: Tensor.%s is not a descriptor", acc_names[i]);
            return -1;
        }
    } else if (base && Py_TYPE(d) == &PyMethodDescr_Type) {
        PyMethodDef *m = ((PyMethodDescrObject *)d)->d_method;
        const int flags = m->ml_flags & ~METH_COEXIST;
        if (flags == METH_NOARGS || flags == (METH_VARARGS | METH_KEYWORDS)) {   /* others: vectorcall */
            a->meth = m->ml_meth;
            a->flags = flags;
        }
    }
    return 0;
}

/* A tensor's view: float32 or int64, CPU, strided, no grad, no negative bit (its memory would
 * hold -x); 0 (no error set) for anything else, which the general path converts or refuses.
 * Cheapest checks first; a contiguous tensor's strides follow from its shape (stride() parses
 * its overloads: ~2x is_contiguous()). */
static int torch_view(PyObject *o, Py_buffer *b, int flags, Py_ssize_t *store) {
    PyObject *dtype = tacc(A_DTYPE, o);
    if (dtype == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(dtype);
    if (dtype != T.f32 && dtype != T.i64)
        return 0;
    if (!tis(A_IS_CPU, o, Py_True) || !tis(A_LAYOUT, o, T.strided) || !tis(A_REQUIRES_GRAD, o, Py_False)
        || !tis(A_IS_NEG, o, Py_False))
        return 0;
    const int contiguous = tis(A_IS_CONTIGUOUS, o, Py_True);
    PyObject *ptr = tacc(A_DATA_PTR, o), *shape = ptr == NULL ? NULL : tacc(A_SHAPE, o);
    PyObject *strides = contiguous || shape == NULL ? NULL : tacc(A_STRIDE, o);
    int ok = ptr != NULL && shape != NULL && (contiguous || strides != NULL);
    void *buf = ok ? PyLong_AsVoidPtr(ptr) : NULL;
    const Py_ssize_t itemsize = dtype == T.f32 ? 4 : 8;
    ok = ok && !PyErr_Occurred() && fill_view(b, buf, shape, strides, itemsize, itemsize == 4 ? "f" : "q", flags, store);
    Py_XDECREF(ptr);
    Py_XDECREF(shape);
    Py_XDECREF(strides);
    if (!ok)
        PyErr_Clear();
    return ok;
}

/* A NumPy array of native float32 or int64 as a view of its own shape and strides (b->obj NULL:
 * nothing to release); 0 for other arrays, which take the buffer protocol. */
static int np_view(PyObject *o, Py_buffer *b, int flags) {
    PyArrayObject *a = (PyArrayObject *)o;
    const int t = PyArray_TYPE(a);
    const int f32 = t == NPY_FLOAT, i64 = t == NPY_LONGLONG || (t == NPY_LONG && sizeof(long) == 8);
    if (!(f32 || i64) || !PyArray_ISNOTSWAPPED(a) || ((flags & PyBUF_WRITABLE) && !PyArray_ISWRITEABLE(a))
        || PyArray_NDIM(a) > VIEW_MAXDIM)
        return 0;
    memset(b, 0, sizeof *b);
    b->buf = PyArray_DATA(a);
    b->ndim = PyArray_NDIM(a);
    b->itemsize = f32 ? 4 : 8;
    b->format = f32 ? "f" : "q";
    b->shape = PyArray_DIMS(a);
    b->strides = PyArray_STRIDES(a);
    if ((flags & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS) {
        Py_ssize_t expect = b->itemsize;
        for (int i = b->ndim - 1; i >= 0; i--) {
            if (b->shape[i] > 1 && b->strides[i] != expect)
                return 0;
            expect *= b->shape[i];
        }
    }
    return 1;
}

/* An array argument: a NumPy array (np_view), another buffer, a torch tensor (torch_view), or a
 * tuple (address, shape, strides in elements, format) that the caller built from an array it has
 * checked. 0 and no error set when it is neither (the caller returns NotImplemented). */
static int get_view(PyObject *o, Py_buffer *b, int flags, Py_ssize_t *store) {
    if (Py_TYPE(o) == &PyArray_Type && np_view(o, b, flags))
        return 1;
    if (IS_TORCH(o))
        return torch_view(o, b, flags, store);
    if (!PyTuple_CheckExact(o))
        return PyObject_GetBuffer(o, b, flags) < 0 ? (PyErr_Clear(), 0) : 1;
    if (PyTuple_GET_SIZE(o) != 4)
        return 0;
    PyObject *fmt = PyTuple_GET_ITEM(o, 3);
    const char *format = PyUnicode_Check(fmt) ? PyUnicode_AsUTF8(fmt) : NULL;
    if (format == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t itemsize = strcmp(format, "f") == 0 ? 4 : strcmp(format, "q") == 0 ? 8 : 0;
    void *buf = PyLong_AsVoidPtr(PyTuple_GET_ITEM(o, 0));
    if (itemsize == 0 || PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return fill_view(b, buf, PyTuple_GET_ITEM(o, 1), PyTuple_GET_ITEM(o, 2), itemsize,
                     itemsize == 4 ? "f" : "q", flags, store);
}

/* rows, n and row strides of x and y for a kernel taking (x, y, rows, n, ldx, ldy, ...): 1 when
 * the fast path may run (the same shape of at least `min_ndim` axes, each with layout(), x and y
 * identical or disjoint), else 0. */
static int xy_check(const Py_buffer *bx, const Py_buffer *by, int min_ndim, size_t *rows, size_t *n,
                    size_t *ldx, size_t *ldy) {
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

/* x (args[1]) and y (args[2], writable) of a row or unary call, held together with their layout
 * (the views' shapes and strides live in `store`: an XY is never copied). */
typedef struct {
    Py_buffer bx, by;
    Py_ssize_t store[4 * VIEW_MAXDIM];
    size_t rows, n, ldx, ldy;
} XY;

/* -1 when x and y are not arrays (nothing held), else both held and xy_check's answer; xy_close
 * releases them. */
static int xy_open(PyObject *const *args, XY *p, int min_ndim) {
    p->rows = p->n = p->ldx = p->ldy = 0;
    if (!get_view(args[1], &p->bx, PyBUF_STRIDES | PyBUF_FORMAT, p->store))
        return -1;
    if (!get_view(args[2], &p->by, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE, p->store + 2 * VIEW_MAXDIM)) {
        PyBuffer_Release(&p->bx);
        return -1;
    }
    return xy_check(&p->bx, &p->by, min_ndim, &p->rows, &p->n, &p->ldx, &p->ldy);
}

static void xy_close(XY *p) {
    PyBuffer_Release(&p->by);
    PyBuffer_Release(&p->bx);
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
    XY p;
    const int ok = xy_open(args, &p, 1);
    if (ok < 0)
        Py_RETURN_NOTIMPLEMENTED;
    int rc = 0;
    if (ok && p.rows && p.n) {
        RUN_KERNEL(p.rows * p.n, rc = nargs == 4 ? ((row_kernel_mt)fp)(p.bx.buf, p.by.buf, p.rows, p.n, p.ldx, p.ldy, threads)
                                             : ((row_kernel)fp)(p.bx.buf, p.by.buf, p.rows, p.n, p.ldx, p.ldy));
    }
    xy_close(&p);
    if (!ok)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromLong(rc);
}

/* repeat(mt_fnptr, x, y, threads, number): a row kernel's <name>_mt called `number` times back to
 * back on x and y, checked once, timed here (CLOCK_MONOTONIC): seconds as a float, NotImplemented
 * when the arrays are not ones call() takes, or the first nonzero code. What softgen tune times at
 * sizes where Python's ~0.3 us per call would be most of a call (issue 13: a 1K row runs ~0.3 us). */
static PyObject *repeat(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    void *fp = entry_point(args, nargs, 5, 5, "repeat(mt_fnptr, x, y, threads, number)");
    if (fp == NULL)
        return NULL;
    const long t = PyLong_AsLong(args[3]);
    const Py_ssize_t number = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (t < 0 || t > INT_MAX || number < 1) {
        PyErr_SetString(PyExc_ValueError, "repeat: threads must be 0..INT_MAX and number >= 1");
        return NULL;
    }
    XY p;
    const int ok = xy_open(args, &p, 1);
    if (ok < 0)
        Py_RETURN_NOTIMPLEMENTED;
    int rc = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (Py_ssize_t i = 0; ok && rc == 0 && i < number; i++)
        rc = ((row_kernel_mt)fp)(p.bx.buf, p.by.buf, p.rows, p.n, p.ldx, p.ldy, (int)t);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    xy_close(&p);
    if (!ok)
        Py_RETURN_NOTIMPLEMENTED;
    if (rc != 0)
        return PyLong_FromLong(rc);
    return PyFloat_FromDouble((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
}

typedef int (*unary_kernel)(const float *, float *, size_t, size_t, size_t, size_t, size_t);
typedef int (*unary_kernel_mt)(const float *, float *, size_t, size_t, size_t, size_t, size_t, int);

/* A unary matrix kernel (sinkhorn, newton_pinv...): x and y as for call(), at least two axes;
 * rows = batch * m, m = x.shape[-2] (issue 15: matrix calls). */
static PyObject *unary(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    void *fp = entry_point(args, nargs, 3, 3, "unary(fnptr, x, y)");
    if (fp == NULL)
        return NULL;
    XY p;
    const int ok = xy_open(args, &p, 2);
    if (ok < 0)
        Py_RETURN_NOTIMPLEMENTED;
    size_t m = ok ? (size_t)p.bx.shape[p.bx.ndim - 2] : 0;
    int rc = 0;
    if (ok && p.rows && p.n) {
        RUN_KERNEL(p.rows * p.n, rc = ((unary_kernel)fp)(p.bx.buf, p.by.buf, p.rows, p.n, p.ldx, p.ldy, m));
    }
    xy_close(&p);
    if (!ok)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromLong(rc);
}

typedef int (*selected_kernel)(const float *, int64_t *, float *, size_t, size_t, size_t, size_t);
typedef int (*selected_kernel_mt)(const float *, int64_t *, float *, size_t, size_t, size_t, size_t, int);

/* Run a top-k kernel on held views: -1 when the fast path declines, else the kernel's code.
 * `mt`: fp is <name>_mt, called with `threads`. */
static int selected_run(void *fp, const Py_buffer *bx, const Py_buffer *bi, const Py_buffer *bw, int mt,
                        int threads) {
    size_t rows = 0, n = 0, ldx = 0;
    int ok = layout(bx, &rows, &n, &ldx) && bi->itemsize == 8 && bi->format != NULL
             && (strcmp(bi->format, "q") == 0 || strcmp(bi->format, "l") == 0)
             && bw->itemsize == 4 && bw->format != NULL && strcmp(bw->format, "f") == 0
             && bi->ndim == bx->ndim && bw->ndim == bx->ndim
             && memcmp(bi->shape, bx->shape, sizeof(Py_ssize_t) * (bx->ndim - 1)) == 0
             && memcmp(bw->shape, bx->shape, sizeof(Py_ssize_t) * (bx->ndim - 1)) == 0
             && bi->shape[bx->ndim - 1] == bw->shape[bx->ndim - 1]
             && ((uintptr_t)bi->buf & 7u) == 0 && ((uintptr_t)bw->buf & 3u) == 0;
    if (!ok)
        return -1;
    size_t m = (size_t)bw->shape[bx->ndim - 1];
    int rc = 0;
    if (rows && n && m) {
        if (mt)
            RUN_KERNEL(rows * n, rc = ((selected_kernel_mt)fp)(bx->buf, bi->buf, bw->buf, rows, n, ldx, m, threads));
        else
            RUN_KERNEL(rows * n, rc = ((selected_kernel)fp)(bx->buf, bi->buf, bw->buf, rows, n, ldx, m));
    }
    return rc;
}

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
    const int rc = selected_run(fp, &bx, &bi, &bw, 0, 0);
    PyBuffer_Release(&bw);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&bx);
    if (rc < 0)
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

/* The dims of a general kernel as its arrays are seen (spec: each matrix's row and column dim). */
typedef struct {
    size_t dims[GENERAL_MAXDIMS], ld[GENERAL_MAXIN + 1], total;
    char known[GENERAL_MAXDIMS];
} general_dims;

/* Matrix i (an input, or the output i == nin) of a general kernel, checked against the first
 * input: float32 rows with one stride, the same leading axes, its dims agreeing with the others'. */
static int general_check(const Py_buffer *b, int i, int nd, const signed char *spec, general_dims *g) {
    const Py_buffer *v = &b[i];
    size_t rows, n;
    int ok = v->ndim >= 2 && v->ndim == b[0].ndim && layout(v, &rows, &n, &g->ld[i]) && rows && n
             && memcmp(v->shape, b[0].shape, sizeof(Py_ssize_t) * (v->ndim - 2)) == 0;
    for (int j = 0; j < 2 && ok; j++) {
        int d = spec[2 * i + j];
        size_t size = (size_t)v->shape[v->ndim - 2 + j];
        if (d < 0 || d >= nd) {
            ok = 0;
        } else if (g->known[d]) {
            ok = g->dims[d] == size;
        } else {
            g->known[d] = 1;
            g->dims[d] = size;
        }
    }
    g->total += ok ? rows * n : 0;
    return ok;
}

static size_t batch_of(const Py_buffer *b) {
    size_t batch = 1;
    for (int k = 0; k < b->ndim - 2; k++)
        batch *= (size_t)b->shape[k];
    return batch;
}

/* Run a general kernel on its nin + 1 checked views: -1 when it declines (a dim no matrix gives,
 * the output overlapping an input: the general path copies), else the kernel's code. */
static int general_run(void *fp, const Py_buffer *b, int nin, int nd, const general_dims *g) {
    for (int d = 0; d < nd; d++)
        if (!g->known[d])
            return -1;
    const size_t batch = batch_of(&b[0]);
    for (int i = 0; i < nin; i++) {
        size_t ri = (size_t)b[i].shape[b[i].ndim - 2], ro = (size_t)b[nin].shape[b[nin].ndim - 2];
        const char *x0 = b[i].buf, *x1 = x0 + 4 * ((batch * ri - 1) * g->ld[i] + (size_t)b[i].shape[b[i].ndim - 1]);
        const char *y0 = b[nin].buf, *y1 = y0 + 4 * ((batch * ro - 1) * g->ld[nin] + (size_t)b[nin].shape[b[nin].ndim - 1]);
        if (!(x1 <= y0 || y1 <= x0))
            return -1;
    }
    z a[GENERAL_MAXARGS];
    int na = 0, rc = 0;
    for (int i = 0; i <= nin; i++)
        a[na++] = (z)(uintptr_t)b[i].buf;
    a[na++] = batch;
    for (int d = 0; d < nd; d++)
        a[na++] = g->dims[d];
    for (int i = 0; i <= nin; i++)
        a[na++] = g->ld[i];
    RUN_KERNEL(g->total, rc = call_general(fp, na, a));
    return rc;
}

/* A general spec tuple (ndims, row dim, col dim of each input, then of the output) as C ints;
 * 0 (no error set) when it is not one for nin inputs. */
static int parse_spec(PyObject *spec, Py_ssize_t nin, int *nd, signed char *out) {
    if (!PyTuple_Check(spec) || nin < 1 || nin > GENERAL_MAXIN || PyTuple_GET_SIZE(spec) != 1 + 2 * (nin + 1))
        return 0;
    long v = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
    if (v < 1 || v > GENERAL_MAXDIMS) {
        PyErr_Clear();
        return 0;
    }
    *nd = (int)v;
    for (Py_ssize_t i = 1; i < PyTuple_GET_SIZE(spec); i++) {
        v = PyLong_AsLong(PyTuple_GET_ITEM(spec, i));
        if (v < 0 || v >= *nd) {
            PyErr_Clear();
            return 0;
        }
        out[i - 1] = (signed char)v;
    }
    return 1;
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
    int nd;
    signed char spec[2 * (GENERAL_MAXIN + 1)];
    if (!parse_spec(args[1], nin, &nd, spec))
        Py_RETURN_NOTIMPLEMENTED;
    Py_buffer b[GENERAL_MAXIN + 1];
    Py_ssize_t store[(GENERAL_MAXIN + 1) * 2 * VIEW_MAXDIM];
    general_dims g = {.total = 0};
    int held = 0, ok = 1;
    for (Py_ssize_t i = 0; i <= nin && ok; i++) {
        PyObject *o = i < nin ? PyTuple_GET_ITEM(args[2], i) : args[3];
        int flags = PyBUF_STRIDES | PyBUF_FORMAT | (i == nin ? PyBUF_WRITABLE : 0);
        if (!get_view(o, &b[i], flags, store + i * 2 * VIEW_MAXDIM))
            break;
        held++;
        ok = general_check(b, (int)i, nd, spec, &g);
    }
    const int rc = ok && held == nin + 1 ? general_run(fp, b, (int)nin, nd, &g) : -1;
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&b[i]);
    if (rc < 0)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromLong(rc);
}

/* ---- entry(kind, fnptr, param): a kernel's callable (issue 15) ----------------------------------
 * e(x, out) (a general kernel: e(inputs, out)) runs the kernel when the fast path applies and
 * returns the result: `out` itself, or outputs allocated here in the caller's type (NumPy
 * arrays, or torch tensors when x, or an input, is one). NotImplemented when it declines (other
 * array types, layouts, dtypes: Python's general path copies, converts or raises), an int when the
 * kernel returns a nonzero code. Arrays: exactly numpy.ndarray or torch.Tensor. */
enum { E_ROW, E_SELECTED, E_UNARY, E_GENERAL };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    void *fp;
    void *mt;                                  /* <name>_mt, or NULL: calls with threads decline */
    int kind, nd, nin;
    size_t k;                                  /* top-k: k */
    signed char spec[2 * (GENERAL_MAXIN + 1)]; /* general: each matrix's row and column dim */
} Entry;

#define ARRAY(o) (Py_TYPE(o) == &PyArray_Type || IS_TORCH(o))

/* A new C-contiguous NumPy array of `shape` (float32, or int64 when `i64`), viewed in `b`;
 * NULL with an exception set if it cannot be made. */
static PyObject *alloc(int ndim, const Py_ssize_t *shape, int i64, Py_buffer *b) {
    PyObject *res = PyArray_SimpleNew(ndim, (npy_intp *)shape, i64 ? NPY_INT64 : NPY_FLOAT32);
    if (res != NULL && !np_view(res, b, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE)) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_RuntimeError, "_fastcall: a new array is not a float32/int64 array");
        return NULL;
    }
    return res;
}

/* A result alloc() made, in the caller's type: a tensor through torch.from_numpy (zero-copy;
 * cheaper than torch.empty(*shape, dtype=...)) when `torch`. Steals `a`; NULL on an error. */
static PyObject *caller_type(PyObject *a, int torch) {
    if (!torch || a == NULL)
        return a;
    PyObject *t = PyObject_Vectorcall(T.from_numpy, &a, 1, NULL);
    Py_DECREF(a);
    return t;
}

/* Returns of entry calls: NotImplemented (declined) or the kernel's nonzero code. */
static PyObject *declined(void) { Py_RETURN_NOTIMPLEMENTED; }

/* `fp`: e->fp, or e->mt called with `threads` (the callers pick). */
static PyObject *entry_rows(Entry *e, void *fp, int threads, PyObject *x, PyObject *out) {
    Py_buffer bx, by;
    Py_ssize_t store[4 * VIEW_MAXDIM];
    size_t rows, n, ldx, ldy;
    if (!get_view(x, &bx, PyBUF_STRIDES | PyBUF_FORMAT, store))
        return declined();
    const int torch = IS_TORCH(x), min_ndim = e->kind == E_UNARY ? 2 : 1;
    PyObject *y = out;
    int held = 0;
    if (out == Py_None) {   /* check x before allocating for it */
        if (bx.ndim < min_ndim || !layout(&bx, &rows, &n, &ldx)) {
            PyBuffer_Release(&bx);
            return declined();
        }
        y = alloc(bx.ndim, bx.shape, 0, &by);
        held = y != NULL ? 1 : -1;
    } else {
        Py_INCREF(y);
        held = get_view(y, &by, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE, store + 2 * VIEW_MAXDIM);
    }
    if (held < 0) {   /* allocation failed: its error stands */
        PyBuffer_Release(&bx);
        Py_XDECREF(y);
        return NULL;
    }
    int rc = -1;
    if (held && xy_check(&bx, &by, min_ndim, &rows, &n, &ldx, &ldy)) {
        rc = 0;
        if (rows && n) {
            const size_t m = e->kind == E_UNARY ? (size_t)bx.shape[bx.ndim - 2] : 0;
            if (fp != e->fp && e->kind == E_UNARY)
                RUN_KERNEL(rows * n, rc = ((unary_kernel_mt)fp)(bx.buf, by.buf, rows, n, ldx, ldy, m, threads));
            else if (fp != e->fp)
                RUN_KERNEL(rows * n, rc = ((row_kernel_mt)fp)(bx.buf, by.buf, rows, n, ldx, ldy, threads));
            else if (e->kind == E_UNARY)
                RUN_KERNEL(rows * n, rc = ((unary_kernel)fp)(bx.buf, by.buf, rows, n, ldx, ldy, m));
            else
                RUN_KERNEL(rows * n, rc = ((row_kernel)fp)(bx.buf, by.buf, rows, n, ldx, ldy));
        }
    }
    if (held)
        PyBuffer_Release(&by);
    PyBuffer_Release(&bx);
    if (rc == 0)
        return out == Py_None ? caller_type(y, torch) : y;
    Py_DECREF(y);
    return rc < 0 ? declined() : PyLong_FromLong(rc);
}

static PyObject *entry_selected(Entry *e, void *fp, int threads, PyObject *x, PyObject *out) {
    Py_buffer bx, bi, bw;
    Py_ssize_t store[6 * VIEW_MAXDIM];
    size_t rows, n, ldx;
    if (out != Py_None || !get_view(x, &bx, PyBUF_STRIDES | PyBUF_FORMAT, store))
        return declined();   /* out=: the general path checks the (indices, weights) pair */
    if (!layout(&bx, &rows, &n, &ldx)) {
        PyBuffer_Release(&bx);
        return declined();
    }
    const int torch = IS_TORCH(x);
    Py_ssize_t shape[VIEW_MAXDIM];
    memcpy(shape, bx.shape, sizeof(Py_ssize_t) * bx.ndim);
    shape[bx.ndim - 1] = (Py_ssize_t)(e->k < n ? e->k : n);
    PyObject *idx = alloc(bx.ndim, shape, 1, &bi), *w = idx ? alloc(bx.ndim, shape, 0, &bw) : NULL;
    int rc = w != NULL ? selected_run(fp, &bx, &bi, &bw, fp != e->fp, threads) : -2;
    if (w != NULL)
        PyBuffer_Release(&bw);
    if (idx != NULL)
        PyBuffer_Release(&bi);
    PyBuffer_Release(&bx);
    PyObject *res = NULL;
    if (rc == 0 && (idx = caller_type(idx, torch)) != NULL && (w = caller_type(w, torch)) != NULL)
        res = PyTuple_Pack(2, idx, w);
    Py_XDECREF(idx);
    Py_XDECREF(w);
    return rc == 0 || rc == -2 ? res : rc < 0 ? declined() : PyLong_FromLong(rc);
}

static PyObject *entry_general(Entry *e, PyObject *inputs, PyObject *out) {
    if (!PyTuple_CheckExact(inputs) || PyTuple_GET_SIZE(inputs) != e->nin || !(out == Py_None || ARRAY(out)))
        return declined();
    Py_buffer b[GENERAL_MAXIN + 1];
    Py_ssize_t store[(GENERAL_MAXIN + 1) * 2 * VIEW_MAXDIM];
    general_dims g = {.total = 0};
    int held = 0, ok = 1, torch = 0;
    for (int i = 0; i < e->nin && ok; i++) {
        PyObject *o = PyTuple_GET_ITEM(inputs, i);
        if (!ARRAY(o) || !get_view(o, &b[i], PyBUF_STRIDES | PyBUF_FORMAT, store + i * 2 * VIEW_MAXDIM))
            break;
        held++;
        torch |= IS_TORCH(o);
        ok = general_check(b, i, e->nd, e->spec, &g);
    }
    PyObject *y = NULL;
    int failed = 0;
    if (ok && held == e->nin) {
        Py_buffer *by = &b[e->nin];
        Py_ssize_t *ys = store + e->nin * 2 * VIEW_MAXDIM;
        if (out == Py_None) {   /* lead axes of the inputs, then the output's row and column dims */
            int rd = e->spec[2 * e->nin], cd = e->spec[2 * e->nin + 1];
            if (g.known[rd] && g.known[cd]) {
                Py_ssize_t shape[VIEW_MAXDIM];
                memcpy(shape, b[0].shape, sizeof(Py_ssize_t) * b[0].ndim);
                shape[b[0].ndim - 2] = (Py_ssize_t)g.dims[rd];
                shape[b[0].ndim - 1] = (Py_ssize_t)g.dims[cd];
                y = alloc(b[0].ndim, shape, 0, by);
                failed = y == NULL;
                held += y != NULL;
            }
        } else if (get_view(out, by, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE, ys)) {
            y = out;
            Py_INCREF(y);
            held++;
        }
    }
    int rc = -1;
    if (held == e->nin + 1 && general_check(b, e->nin, e->nd, e->spec, &g))
        rc = general_run(e->fp, b, e->nin, e->nd, &g);
    for (int i = 0; i < held; i++)
        PyBuffer_Release(&b[i]);
    if (rc == 0)
        return out == Py_None ? caller_type(y, torch) : y;
    Py_XDECREF(y);
    return failed ? NULL : rc < 0 ? declined() : PyLong_FromLong(rc);
}

static PyObject *entry_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Entry *e = (Entry *)self;
    const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 2 || nargs > 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a softgen._fastcall entry takes (x, out[, threads]), a general one "
                                         "(inputs, out)");
        return NULL;
    }
    PyObject *x = args[0], *out = args[1];
    void *fp = e->fp;
    int threads = 0;
    if (nargs == 3) {   /* through <name>_mt; other thread counts (bool, NumPy ints, > INT_MAX): Python's path */
        int overflow = 0;
        const long t = PyLong_CheckExact(args[2]) ? PyLong_AsLongAndOverflow(args[2], &overflow) : LONG_MIN;
        if (e->mt == NULL || overflow || t < INT_MIN || t > INT_MAX)
            return declined();
        fp = e->mt;
        threads = (int)t;
    }
    if (e->kind == E_GENERAL)
        return fp == e->fp ? entry_general(e, x, out) : declined();
    if (!ARRAY(x) || !(out == Py_None || ARRAY(out)))
        return declined();
    return e->kind == E_SELECTED ? entry_selected(e, fp, threads, x, out) : entry_rows(e, fp, threads, x, out);
}

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "softgen._fastcall.Entry",
    .tp_basicsize = sizeof(Entry),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Entry, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_doc = "A kernel's fast callable (softgen._fastcall.entry).",
};

static PyObject *entry(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    static const char *kinds[] = {"row", "selected", "unary", "general"};
    void *fp = entry_point(args, nargs, 3, 4, "entry(fnptr, kind, param[, mt_fnptr])");
    if (fp == NULL)
        return NULL;
    void *mt = nargs == 4 && args[3] != Py_None ? PyLong_AsVoidPtr(args[3]) : NULL;
    if (PyErr_Occurred())
        return NULL;
    const char *kind = PyUnicode_Check(args[1]) ? PyUnicode_AsUTF8(args[1]) : NULL;
    int k = 0;
    while (kind != NULL && k < 4 && strcmp(kind, kinds[k]) != 0)
        k++;
    if (kind == NULL || k == 4) {
        PyErr_Format(PyExc_ValueError, "entry: kind is one of row, selected, unary, general, not %R", args[1]);
        return NULL;
    }
    Entry *e = PyObject_New(Entry, &EntryType);
    if (e == NULL)
        return NULL;
    e->vectorcall = entry_vectorcall;
    e->fp = fp;
    e->mt = mt;
    e->kind = k;
    e->k = 0;
    e->nd = e->nin = 0;
    if (k == E_SELECTED) {   /* param: k */
        e->k = PyLong_AsSize_t(args[2]);
    } else if (k == E_GENERAL) {   /* param: the spec, for (size - 1) / 2 - 1 inputs */
        PyObject *p = args[2];
        e->nin = PyTuple_Check(p) ? (int)(PyTuple_GET_SIZE(p) - 1) / 2 - 1 : 0;
        if (!parse_spec(p, e->nin, &e->nd, e->spec))
            PyErr_SetString(PyExc_ValueError, "entry: a general kernel's param is its spec (ndims, row and column "
                                              "dim of each matrix), at most 4 inputs and 6 dims");
    }
    if (PyErr_Occurred()) {
        Py_DECREF(e);
        return NULL;
    }
    return (PyObject *)e;
}

/* set_torch(torch.Tensor, torch.float32, torch.int64, torch.strided, torch.from_numpy): what
 * softgen.arrays registers once it has seen a tensor. */
static PyObject *set_torch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "set_torch(Tensor, float32, int64, strided, from_numpy)");
        return NULL;
    }
    Acc a[A_N];
    for (int i = 0; i < A_N; i++) {   /* the type's own descriptors: looked up once, called per tensor */
        PyObject *d = PyObject_GetAttrString(args[0], acc_names[i]);
        if (d == NULL || acc_set(&a[i], i, d, (PyTypeObject *)args[0]) < 0) {
            Py_XDECREF(d);
            while (i--)
                Py_DECREF(a[i].descr);
            return NULL;
        }
    }
    if (T.no_args == NULL && (T.no_args = PyTuple_New(0)) == NULL) {
        for (int i = 0; i < A_N; i++)
            Py_DECREF(a[i].descr);
        return NULL;
    }
    Py_XDECREF(T.type), Py_XDECREF(T.f32), Py_XDECREF(T.i64), Py_XDECREF(T.strided), Py_XDECREF(T.from_numpy);
    for (int i = 0; i < A_N; i++)
        Py_XDECREF(T.a[i].descr);
    for (int i = 1; i < 5; i++)
        Py_INCREF(args[i]);
    Py_INCREF(args[0]);
    T.f32 = args[1], T.i64 = args[2], T.strided = args[3], T.from_numpy = args[4];
    memcpy(T.a, a, sizeof a);
    T.type = (PyTypeObject *)args[0];
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"entry", (PyCFunction)(void (*)(void))entry, METH_FASTCALL,
     "entry(fnptr, kind, param[, mt_fnptr]) -> a callable e(x, out) (general: e(inputs, out)) returning the "
     "result (out, or outputs allocated in the caller's array type), NotImplemented for the general path, or "
     "the kernel's nonzero code; kind: row, selected (param k), unary, general (param: spec as general()'s), "
     "else None. mt_fnptr: the extended entry <name>_mt, which e(x, out, threads) calls (threads an int; "
     "without mt_fnptr, or general, such calls return NotImplemented)"},
    {"set_torch", (PyCFunction)(void (*)(void))set_torch, METH_FASTCALL,
     "set_torch(Tensor, float32, int64, strided, from_numpy): read torch tensors in C from now on"},
    {"general", (PyCFunction)(void (*)(void))general, METH_FASTCALL,
     "general(fnptr, spec, inputs, y) -> int return code, or NotImplemented for the general path: "
     "a general matrix kernel; spec = (ndims, row and column dim of each input, then of y)"},
    {"unary", (PyCFunction)(void (*)(void))unary, METH_FASTCALL,
     "unary(fnptr, x, y) -> int return code, or NotImplemented for the general path: a unary "
     "matrix kernel on (..., m, n) arrays"},
    {"selected", (PyCFunction)(void (*)(void))selected, METH_FASTCALL,
     "selected(fnptr, x, indices, weights) -> int return code, or NotImplemented for the general "
     "path: a top-k kernel; indices/weights C-contiguous of shape x.shape[:-1] + (min(k, n),)"},
    {"repeat", (PyCFunction)(void (*)(void))repeat, METH_FASTCALL,
     "repeat(mt_fnptr, x, y, threads, number) -> seconds for `number` back-to-back calls of a row kernel's "
     "<name>_mt in C, NotImplemented (arrays call() declines), or the kernel's nonzero code"},
    {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL,
     "call(fnptr, x, y[, threads]) -> int return code, or NotImplemented for the general path; "
     "with threads, fnptr is the extended entry <name>_mt"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcall", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastcall(void) {
    import_array();   /* NumPy's C API: array fields and PyArray_SimpleNew */
    if (PyType_Ready(&EntryType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
