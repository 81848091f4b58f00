/* Fused nearest-code search for low-dimensional codes (the VQGAN-LC case: D' = 4 or 8).
 *
 * For each query row z_i it returns argmin_j ( ||c_j||^2 - 2 z_i . c_j ), ties to the lowest j,
 * without ever writing a distance matrix.
 *
 * The caller passes the codebook pre-scaled and transposed, ct = -2 c^T (D, K), and csq = ||c_j||^2,
 * so a distance is dist(i, j) = csq_j + sum_t z_it ct[t, j]. The Python side splits queries over
 * threads; nearest_l2 releases the GIL.
 *
 * Two paths, both exact (the first index among the exact minima of the float32 values they compute):
 *
 *  - Scalar: a plain loop over tiles of codes, strictly-smaller updates in increasing code order.
 *  - AVX2 + FMA (x86 CPUs that have it; one binary serves every x86 CPU, the path is picked at run
 *    time): brute force over all codes. Codes are copied, one L1-sized tile at a time, into blocks of
 *    16 codes [csq (16)] [ct row 0 (16)] ... [ct row D-1 (16)]. A register block of 4 queries x 16
 *    codes is computed per step and only the running minimum VALUE per query (per lane) is kept over
 *    a tile. At the end of a tile, a query whose tile minimum is strictly below its best so far (rare
 *    after the first few tiles) rescans the tile alone with the same instruction sequence (start
 *    from csq_j, one FMA per t in increasing t) to find the first code reaching exactly that value.
 *    Tiles go in increasing code order and only a strictly smaller value replaces the best, so ties
 *    go to the lowest index.
 *
 * Allocation failure raises MemoryError; nothing is left half-written for the caller to trust.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Allocation, with a test hook that makes the next allocations fail.                          */
/* ------------------------------------------------------------------------------------------ */

static int fail_in = -1; /* allocations left before the one that fails; -1: none (test hook, GIL held) */

static void *xmalloc(size_t size) {
    if (fail_in >= 0 && fail_in-- == 0) return NULL;
    return PyMem_RawMalloc(size);
}

/* ------------------------------------------------------------------------------------------ */
/* Scalar path (non-x86 builds, x86 CPUs without AVX2+FMA, or kernel="scalar").            */
/* ------------------------------------------------------------------------------------------ */

#define SCALAR_TILE 4096

static void search_scalar(const float *z, const float *ct, const float *csq, int64_t *out, float *bv,
                          int64_t n, int64_t d, int64_t k) {
    for (int64_t t0 = 0; t0 < k; t0 += SCALAR_TILE) {
        int64_t t1 = t0 + SCALAR_TILE < k ? t0 + SCALAR_TILE : k;
        for (int64_t q = 0; q < n; q++) {
            const float *zq = z + q * d;
            float best = bv[q];
            int64_t bi = out[q];
            for (int64_t j = t0; j < t1; j++) {
                float acc = csq[j];
                for (int64_t t = 0; t < d; t++) acc += zq[t] * ct[t * k + j];
                /* Strictly smaller: codes are visited in increasing index order. */
                if (acc < best) { best = acc; bi = j; }
            }
            bv[q] = best; out[q] = bi;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* AVX2 + FMA path.                                                                           */
/* ------------------------------------------------------------------------------------------ */

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#define AVX2_FN __attribute__((target("avx2,fma")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* Packed blocks of BLK codes: [csq (BLK)] [ct row 0 (BLK)] ... [ct row d-1 (BLK)]. Missing codes
 * of a block have csq = NaN and ct = 0: their value is NaN, which no comparison below ever takes. */
#define BLK 16

/* One distance vector: 8 codes (half `h` of the packed block `p`) against the query `zq`. The block
 * kernels below use exactly this sequence (load csq, then one FMA per t in increasing t). */
#define DIST1(acc, zq, p, h, d)                                                                 \
    do {                                                                                        \
        (acc) = _mm256_loadu_ps((p) + 8 * (h));                                                 \
        for (int64_t t_ = 0; t_ < (d); t_++)                                                    \
            (acc) = _mm256_fmadd_ps(_mm256_broadcast_ss((zq) + t_),                             \
                                    _mm256_loadu_ps((p) + BLK * (t_ + 1) + 8 * (h)), (acc));    \
    } while (0)

/* Keeps a loop-invariant pointer opaque so that the compiler re-broadcasts z inside the loop
 * (one broadcast feeds two FMAs) instead of hoisting 4 d broadcasts out and spilling them. */
#define OPAQUE(p) __asm__("" : "+r"(p))

/* Horizontal minimum of 8 lanes (exact: min returns one of its inputs). */
AVX2_INLINE float hmin8(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* Running per-lane minimum over `nb` packed blocks for 4 queries (z0..z3 may alias).
 * min(x, m) returns m when x is NaN, so a NaN value is never taken (as with `<`). */
AVX2_INLINE void block4_impl(const float *z0, const float *z1, const float *z2, const float *z3,
                             const float *p, int64_t nb, int64_t d, __m256 *m) {
    __m256 m0 = _mm256_set1_ps(INFINITY), m1 = m0, m2 = m0, m3 = m0;
    const int64_t stride = BLK * (d + 1);
    for (int64_t b = 0; b < nb; b++, p += stride) {
        OPAQUE(z0); OPAQUE(z1); OPAQUE(z2); OPAQUE(z3);
        __m256 a0 = _mm256_loadu_ps(p), b0 = _mm256_loadu_ps(p + 8);
        __m256 a1 = a0, a2 = a0, a3 = a0, b1 = b0, b2 = b0, b3 = b0;
#pragma GCC unroll 16
        for (int64_t t = 0; t < d; t++) {
            const float *c = p + BLK * (t + 1);
            __m256 ca = _mm256_loadu_ps(c), cb = _mm256_loadu_ps(c + 8);
            __m256 s;
            s = _mm256_broadcast_ss(z0 + t); a0 = _mm256_fmadd_ps(s, ca, a0); b0 = _mm256_fmadd_ps(s, cb, b0);
            s = _mm256_broadcast_ss(z1 + t); a1 = _mm256_fmadd_ps(s, ca, a1); b1 = _mm256_fmadd_ps(s, cb, b1);
            s = _mm256_broadcast_ss(z2 + t); a2 = _mm256_fmadd_ps(s, ca, a2); b2 = _mm256_fmadd_ps(s, cb, b2);
            s = _mm256_broadcast_ss(z3 + t); a3 = _mm256_fmadd_ps(s, ca, a3); b3 = _mm256_fmadd_ps(s, cb, b3);
        }
        m0 = _mm256_min_ps(a0, _mm256_min_ps(b0, m0));
        m1 = _mm256_min_ps(a1, _mm256_min_ps(b1, m1));
        m2 = _mm256_min_ps(a2, _mm256_min_ps(b2, m2));
        m3 = _mm256_min_ps(a3, _mm256_min_ps(b3, m3));
    }
    m[0] = m0; m[1] = m1; m[2] = m2; m[3] = m3;
}

/* First packed position (from `p`) whose value equals `target` exactly, or -1. */
AVX2_INLINE int64_t rescan_impl(const float *zq, const float *p, int64_t nb, int64_t d, float target) {
    const __m256 tv = _mm256_set1_ps(target);
    const int64_t stride = BLK * (d + 1);
    for (int64_t b = 0; b < nb; b++, p += stride) {
        __m256 a, c;
        DIST1(a, zq, p, 0, d);
        DIST1(c, zq, p, 1, d);
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(a, tv, _CMP_EQ_OQ)) |
                   (_mm256_movemask_ps(_mm256_cmp_ps(c, tv, _CMP_EQ_OQ)) << 8);
        if (mask) return b * BLK + __builtin_ctz((unsigned)mask);
    }
    return -1;
}

/* ---- Brute force ------------------------------------------------------------------------- */

typedef void (*block4_fn)(const float *, const float *, const float *, const float *, const float *, int64_t,
                          int64_t, __m256 *);
typedef int64_t (*rescan_fn)(const float *, const float *, int64_t, int64_t, float);

static int64_t tile_blocks_for(int64_t d) {
    /* Keep a packed tile within about 16 KiB of L1. */
    int64_t nb = 16384 / (4 * BLK * (d + 1));
    return nb < 1 ? 1 : nb;
}

/* Floats of the packing buffer search_brute_avx2 needs (plus 64 bytes of alignment slack). */
static size_t pack_bytes(int64_t d) { return sizeof(float) * (size_t)(tile_blocks_for(d) * BLK * (d + 1)) + 64; }

/* Brute force over all codes for queries [0, n). bv/out hold the best value/index so far (codes
 * are visited in increasing index order, so they must come from lower indices or be +inf/0).
 * `pack` holds pack_bytes(d) bytes. */
AVX2_FN static void search_brute_avx2(const float *z, const float *ct, const float *csq, int64_t *out, float *bv,
                                      int64_t n, int64_t d, int64_t k, block4_fn blk, rescan_fn rs, float *pack) {
    const int64_t tb = tile_blocks_for(d), stride = BLK * (d + 1), tile = tb * BLK;
    float *pk = (float *)(((uintptr_t)pack + 63) & ~(uintptr_t)63);
    __m256 m[4];
    for (int64_t j0 = 0; j0 < k; j0 += tile) {
        const int64_t nc = k - j0 < tile ? k - j0 : tile, nb = (nc + BLK - 1) / BLK;
        for (int64_t b = 0; b < nb; b++) {
            float *pb = pk + b * stride;
            const int64_t jb = j0 + b * BLK, full = nc - b * BLK >= BLK ? BLK : nc - b * BLK;
            for (int64_t l = 0; l < BLK; l++) pb[l] = l < full ? csq[jb + l] : NAN;
            for (int64_t t = 0; t < d; t++)
                for (int64_t l = 0; l < BLK; l++) pb[BLK * (t + 1) + l] = l < full ? ct[t * k + jb + l] : 0.0f;
        }
        for (int64_t q = 0; q < n; q += 4) {
            const int64_t nq = n - q < 4 ? n - q : 4;
            const float *z0 = z + q * d;
            const float *z1 = nq > 1 ? z0 + d : z0, *z2 = nq > 2 ? z0 + 2 * d : z0, *z3 = nq > 3 ? z0 + 3 * d : z0;
            blk(z0, z1, z2, z3, pk, nb, d, m);
            for (int64_t r = 0; r < nq; r++) {
                /* Float compare (not hmin8 first): the common case is a single vcmpps. */
                if (_mm256_movemask_ps(_mm256_cmp_ps(m[r], _mm256_broadcast_ss(bv + q + r), _CMP_LT_OQ))) {
                    const float target = hmin8(m[r]);
                    const int64_t off = rs(z0 + r * d, pk, nb, d, target);
                    if (off >= 0 && off < nc) { bv[q + r] = target; out[q + r] = j0 + off; }
                }
            }
        }
    }
}

/* Kernels specialised for the common dimensions (the compiler unrolls the t loop), and a generic one. */
#define DEFINE_KERNELS(NAME, DEXPR)                                                                       \
    AVX2_FN static void block4_##NAME(const float *z0, const float *z1, const float *z2, const float *z3, \
                                      const float *p, int64_t nb, int64_t d, __m256 *m) {                  \
        (void)d;                                                                                           \
        block4_impl(z0, z1, z2, z3, p, nb, DEXPR, m);                                                      \
    }                                                                                                      \
    AVX2_FN static int64_t rescan_##NAME(const float *zq, const float *p, int64_t nb, int64_t d,           \
                                         float target) {                                                   \
        (void)d;                                                                                           \
        return rescan_impl(zq, p, nb, DEXPR, target);                                                      \
    }

DEFINE_KERNELS(d4, 4)
DEFINE_KERNELS(d8, 8)
DEFINE_KERNELS(d16, 16)
DEFINE_KERNELS(dn, d)

AVX2_FN static void search_avx2(const float *z, const float *ct, const float *csq, int64_t *out, float *bv,
                                int64_t n, int64_t d, int64_t k, float *pack) {
    block4_fn blk = block4_dn;
    rescan_fn rs = rescan_dn;
    if (d == 4) { blk = block4_d4; rs = rescan_d4; }
    else if (d == 8) { blk = block4_d8; rs = rescan_d8; }
    else if (d == 16) { blk = block4_d16; rs = rescan_d16; }
    search_brute_avx2(z, ct, csq, out, bv, n, d, k, blk, rs, pack);
}
#endif

static int cpu_has_avx2(void) {
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* Runs one search with the caller's buffers: bv holds n floats, pack pack_bytes(d) bytes (AVX2 only). */
static void search_range(const float *z, const float *ct, const float *csq, int64_t *out, int64_t n, int64_t d,
                         int64_t k, int use_avx2, void *bv_mem, void *pack_mem) {
    float *bv = (float *)bv_mem; /* running best value per query; its index goes to `out` */
    for (int64_t q = 0; q < n; q++) { bv[q] = INFINITY; out[q] = 0; }
#ifdef HAVE_AVX2_PATH
    if (use_avx2) {
        search_avx2(z, ct, csq, out, bv, n, d, k, (float *)pack_mem);
        return;
    }
#endif
    (void)use_avx2; (void)pack_mem;
    search_scalar(z, ct, csq, out, bv, n, d, k);
}

/* ------------------------------------------------------------------------------------------ */
/* Python glue: buffers with checked dtype, shape and contiguity.                              */
/* ------------------------------------------------------------------------------------------ */

/* The struct format of a buffer is one item code, optionally after a byte-order/alignment mark. */
static char item_code(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    return f[0] != 0 && f[1] == 0 ? f[0] : 0;
}

static int is_float32(const Py_buffer *v) { return item_code(v) == 'f' && v->itemsize == 4; }

static int is_int64(const Py_buffer *v) {
    const char c = item_code(v);
    return (c == 'q' || c == 'l') && v->itemsize == 8;
}

static int get_buffer(PyObject *obj, Py_buffer *v, const char *name, int writable, int ndim) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_ValueError, "nearest_l2: %s must be a C-contiguous%s buffer", name,
                     writable ? " writable" : "");
        return -1;
    }
    if (v->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "nearest_l2: %s must have %d dimensions, got %d", name, ndim, v->ndim);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* nearest_l2(z, ct, csq, out, kernel="auto"): z float32 (n, d), ct = -2 * codebook transposed,
 * float32 (d, k), csq float32 (k,), out int64 (n,), all C-contiguous; kernel "auto", "avx2" or
 * "scalar". Writes the ids into out. */
static PyObject *py_nearest_l2(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"z", "ct", "csq", "out", "kernel", NULL};
    PyObject *zo, *cto, *csqo, *outo, *result = NULL;
    const char *kernel = "auto";
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|s", kwlist, &zo, &cto, &csqo, &outo, &kernel)) return NULL;
    int use_avx2;
    if (strcmp(kernel, "auto") == 0) use_avx2 = cpu_has_avx2();
    else if (strcmp(kernel, "scalar") == 0) use_avx2 = 0;
    else if (strcmp(kernel, "avx2") == 0) {
        if (!cpu_has_avx2()) {
            PyErr_SetString(PyExc_ValueError, "nearest_l2: kernel 'avx2' needs a CPU with AVX2 and FMA; "
                                              "use 'auto' or 'scalar' (VQGAN_LC_SEARCH_KERNEL)");
            return NULL;
        }
        use_avx2 = 1;
    } else {
        PyErr_Format(PyExc_ValueError, "nearest_l2: kernel must be 'auto', 'avx2' or 'scalar', got '%s'", kernel);
        return NULL;
    }
    Py_buffer z, ct, csq, out;
    if (get_buffer(zo, &z, "z", 0, 2) < 0) return NULL;
    if (get_buffer(cto, &ct, "ct", 0, 2) < 0) goto fail_z;
    if (get_buffer(csqo, &csq, "csq", 0, 1) < 0) goto fail_ct;
    if (get_buffer(outo, &out, "out", 1, 1) < 0) goto fail_csq;
    const int64_t n = z.shape[0], d = z.shape[1], k = ct.shape[1];
    if (!is_float32(&z) || !is_float32(&ct) || !is_float32(&csq) || !is_int64(&out)) {
        PyErr_SetString(PyExc_TypeError, "nearest_l2: z, ct and csq must be float32 and out int64");
    } else if (d < 1 || k < 1 || k > INT32_MAX || ct.shape[0] != d || csq.shape[0] != k || out.shape[0] != n) {
        PyErr_Format(PyExc_ValueError,
                     "nearest_l2: shapes do not fit: z (%zd, %zd), ct (%zd, %zd), csq (%zd,), out (%zd,); "
                     "expected ct (d, k) with 1 <= k < 2^31, csq (k,), out (n,)",
                     z.shape[0], z.shape[1], ct.shape[0], ct.shape[1], csq.shape[0], out.shape[0]);
    } else {
        void *bv = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
        void *pack = NULL;
#ifdef HAVE_AVX2_PATH
        if (use_avx2) pack = xmalloc(pack_bytes(d));
        const int pack_ok = !use_avx2 || pack != NULL;
#else
        const int pack_ok = 1;
#endif
        if (bv == NULL || !pack_ok) {
            PyErr_NoMemory();
        } else {
            Py_BEGIN_ALLOW_THREADS
            search_range((const float *)z.buf, (const float *)ct.buf, (const float *)csq.buf, (int64_t *)out.buf,
                         n, d, k, use_avx2, bv, pack);
            Py_END_ALLOW_THREADS
            Py_INCREF(Py_None);
            result = Py_None;
        }
        PyMem_RawFree(bv);
        PyMem_RawFree(pack);
    }
    PyBuffer_Release(&out);
fail_csq:
    PyBuffer_Release(&csq);
fail_ct:
    PyBuffer_Release(&ct);
fail_z:
    PyBuffer_Release(&z);
    return result;
}

static PyObject *py_has_avx2(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return PyBool_FromLong(cpu_has_avx2());
}

static PyObject *py_fail_allocation(PyObject *self, PyObject *args) {
    int index;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &index)) return NULL;
    fail_in = index < 0 ? -1 : index;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"nearest_l2", (PyCFunction)(void (*)(void))py_nearest_l2, METH_VARARGS | METH_KEYWORDS,
     "nearest_l2(z, ct, csq, out, kernel='auto'): fused nearest-code search into out (internal)."},
    {"has_avx2", py_has_avx2, METH_NOARGS, "Whether this CPU can run the AVX2+FMA path."},
    {"_fail_allocation", py_fail_allocation, METH_VARARGS,
     "Test hook: _fail_allocation(i) makes the i-th next buffer allocation (0: the next) fail once; -1 disarms."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_search", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__search(void) { return PyModule_Create(&module); }
