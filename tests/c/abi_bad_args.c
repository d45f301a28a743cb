/*
 * The exported C ABI under bad arguments: every call below must return its documented error
 * code, without touching memory it was not given (tests/test_abi_c.py builds the libraries,
 * compiles this against their headers and runs it). Prints one line per failed check; exits 1
 * if any failed.
 *   abi_row:   softmax (row entry)           abi_topk:  topk_softmax, sparse, k = 3
 *   abi_sink:  sinkhorn (unary matrix entry) abi_gauss: gaussian_kernel (general matrix entry, GEMM)
 *   abi_nocpu: softmax built for a target requiring a feature this CPU lacks (with -DABI_NOCPU)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "abi_row.h"
#include "abi_topk.h"
#include "abi_sink.h"
#include "abi_gauss.h"
#ifdef ABI_NOCPU
#include "abi_nocpu.h"
#endif

#define BIG ((size_t)-1)   /* what an `int n = -1` becomes */

static int failures;

static void expect(int got, int want, const char *what, int line)
{
    if (got != want) {
        printf("FAIL line %d: %s returned %d, expected %d\n", line, what, got, want);
        failures++;
    }
}
#define EXPECT(call, want) expect((call), (want), #call, __LINE__)

static float x[64 * 64], y[64 * 64], w[64];
static int64_t idx[64];

static void row(void)
{
    EXPECT(abi_row_supported(), 1);
    EXPECT(abi_row(x, y, 0, 8, 8, 8), ABI_ROW_OK);            /* nothing to do */
    EXPECT(abi_row(x, y, 4, 0, 0, 0), ABI_ROW_OK);
    EXPECT(abi_row(NULL, y, 4, 8, 8, 8), ABI_ROW_ENULL);
    EXPECT(abi_row(x, NULL, 4, 8, 8, 8), ABI_ROW_ENULL);
    EXPECT(abi_row(x, y, 4, 8, 7, 8), ABI_ROW_ESTRIDE);
    EXPECT(abi_row(x, y, 4, 8, 8, 7), ABI_ROW_ESTRIDE);
    EXPECT(abi_row(x, y, 1, BIG, BIG, BIG), ABI_ROW_EOVERFLOW);   /* one row longer than memory */
    EXPECT(abi_row(x, y, 2, SIZE_MAX / 4 + 1, BIG, BIG), ABI_ROW_EOVERFLOW);
    EXPECT(abi_row(x, y, BIG, 8, 8, 8), ABI_ROW_EOVERFLOW);
    EXPECT(abi_row(x, y, SIZE_MAX / 32 + 1, 8, 8, 8), ABI_ROW_EOVERFLOW);   /* rows * ld * 4 wraps */
    EXPECT(abi_row(x, y, 2, 8, BIG, 8), ABI_ROW_EOVERFLOW);
    EXPECT(abi_row(x, y, 2, 8, 8, BIG), ABI_ROW_EOVERFLOW);
    for (int i = 0; i < 16; i++)
        x[i] = (float)i;
    EXPECT(abi_row(x, y, 2, 8, 8, 8), ABI_ROW_OK);
    float s = 0;
    for (int i = 0; i < 8; i++)
        s += y[i];
    if (s < 0.999f || s > 1.001f) {
        printf("FAIL: a softmax row sums to %g\n", s);
        failures++;
    }
}

static void topk(void)
{
    for (int i = 0; i < 8; i++)
        x[i] = (float)i;
    EXPECT(abi_topk_supported(), 1);
    EXPECT(abi_topk(NULL, idx, w, 1, 8, 8, 3), ABI_TOPK_ENULL);
    EXPECT(abi_topk(x, NULL, w, 1, 8, 8, 3), ABI_TOPK_ENULL);
    EXPECT(abi_topk(x, idx, NULL, 1, 8, 8, 3), ABI_TOPK_ENULL);
    EXPECT(abi_topk(x, idx, w, 1, 8, 7, 3), ABI_TOPK_ESTRIDE);
    EXPECT(abi_topk(x, idx, w, 1, 8, 8, 2), ABI_TOPK_ESTRIDE);      /* ldo < min(k, n) */
    EXPECT(abi_topk(x, idx, w, 1, BIG, BIG, BIG), ABI_TOPK_EOVERFLOW);
    EXPECT(abi_topk(x, idx, w, BIG, 8, 8, 8), ABI_TOPK_EOVERFLOW);
    EXPECT(abi_topk(x, idx, w, SIZE_MAX / 64 + 1, 8, 8, 8), ABI_TOPK_EOVERFLOW);  /* int64 outputs */
    EXPECT(abi_topk(x, idx, w, 1, (1u << 24) + 1, (1u << 24) + 1, 3), ABI_TOPK_ETOOLONG);
    EXPECT(abi_topk(x, idx, w, 1, 8, 8, 3), ABI_TOPK_OK);
    if (idx[0] != 7 || idx[1] != 6 || idx[2] != 5) {
        printf("FAIL: top-3 of 0..7 gave indices %lld %lld %lld\n",
               (long long)idx[0], (long long)idx[1], (long long)idx[2]);
        failures++;
    }
}

static void sink(void)
{
    EXPECT(abi_sink_supported(), 1);
    EXPECT(abi_sink(NULL, y, 4, 4, 4, 4, 4), ABI_SINK_ENULL);
    EXPECT(abi_sink(x, y, 4, 4, 3, 4, 4), ABI_SINK_ESTRIDE);
    EXPECT(abi_sink(x, y, 1, BIG, BIG, BIG, 1), ABI_SINK_EOVERFLOW);
    EXPECT(abi_sink(x, y, 2, SIZE_MAX / 4 + 1, BIG, BIG, 1), ABI_SINK_EOVERFLOW);
    EXPECT(abi_sink(x, y, BIG, 4, 4, 4, 1), ABI_SINK_EOVERFLOW);
    EXPECT(abi_sink(x, y, 4, 4, 4, 4, BIG), ABI_SINK_EMATRIX);
    EXPECT(abi_sink(x, y, 4, 4, 4, 4, 0), ABI_SINK_EMATRIX);
    EXPECT(abi_sink(x, y, 4, 4, 4, 4, 3), ABI_SINK_EMATRIX);
    EXPECT(abi_sink(x, y, 8, 4, 4, 4, 4), ABI_SINK_OK);
}

static void gauss(void)
{
    /* a: batch x n x d, b: batch x m x d, s: batch x n x m */
    EXPECT(abi_gauss_supported(), 1);
    EXPECT(abi_gauss(x, x, y, 0, 4, 4, 8, 8, 8, 4), ABI_GAUSS_OK);
    EXPECT(abi_gauss(NULL, x, y, 1, 4, 4, 8, 8, 8, 4), ABI_GAUSS_ENULL);
    EXPECT(abi_gauss(x, x, NULL, 1, 4, 4, 8, 8, 8, 4), ABI_GAUSS_ENULL);
    EXPECT(abi_gauss(x, x, y, 1, 4, 4, 8, 7, 8, 4), ABI_GAUSS_ESTRIDE);
    EXPECT(abi_gauss(x, x, y, 1, 4, 4, 8, 8, 8, 3), ABI_GAUSS_ESTRIDE);
    EXPECT(abi_gauss(x, x, y, BIG, 4, 4, 8, 8, 8, 4), ABI_GAUSS_EOVERFLOW);
    EXPECT(abi_gauss(x, x, y, 1, BIG, 4, 8, 8, 8, 4), ABI_GAUSS_EOVERFLOW);
    EXPECT(abi_gauss(x, x, y, 1, 4, BIG, 8, 8, 8, BIG), ABI_GAUSS_EOVERFLOW);
    EXPECT(abi_gauss(x, x, y, 1, 4, 4, BIG, BIG, BIG, 4), ABI_GAUSS_EOVERFLOW);
    EXPECT(abi_gauss(x, x, y, 1, 1, 1, SIZE_MAX / 4 + 1, BIG, BIG, 1), ABI_GAUSS_EOVERFLOW);
    EXPECT(abi_gauss(x, x, y, 2, 4, 4, 8, 8, 8, 4), ABI_GAUSS_OK);
}

#ifdef ABI_NOCPU
static void nocpu(void)
{
    EXPECT(abi_nocpu_supported(), 0);
    EXPECT(abi_nocpu(x, y, 2, 8, 8, 8), ABI_NOCPU_ECPU);
    EXPECT(abi_nocpu(NULL, NULL, 0, 0, 0, 0), ABI_NOCPU_ECPU);   /* before any argument check */
    EXPECT(abi_nocpu_supported(), 0);                           /* cached, still 0 */
}
#endif

int main(void)
{
    row();
    topk();
    sink();
    gauss();
#ifdef ABI_NOCPU
    nocpu();
#endif
    if (failures)
        printf("%d check(s) failed\n", failures);
    else
        printf("all ABI checks passed\n");
    return failures != 0;
}
