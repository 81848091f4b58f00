/* Fused nearest-code search for low-dimensional codes (the VQGAN-LC case: D' = 4 or 8).
 *
 * For each query row z_i it returns argmin_j ( ||c_j||^2 - 2 z_i . c_j ), ties to the lowest j,
 * without ever writing a distance matrix: distances live in registers and only a running
 * (min, argmin) per query is kept. The codebook is read in the transposed (D, K) layout so that
 * 8 consecutive codes form one AVX2 vector; codes are visited in tiles that stay in L2.
 *
 * The caller passes the codebook pre-scaled as -2 c^T, so a distance is csq_j + sum_t z_t ct[t, j].
 * The Python side splits queries over threads; this function releases the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <stdint.h>

#define CODE_TILE 16384

static void merge(float v, int64_t j, float *best_v, int64_t *best_i) {
    /* Strictly smaller: codes are visited in increasing index order. */
    if (v < *best_v) { *best_v = v; *best_i = j; }
}

static void tile_scalar(const float *z, const float *ct, const float *csq, int64_t k, int64_t d,
                        int64_t j0, int64_t j1, float *best_v, int64_t *best_i) {
    for (int64_t j = j0; j < j1; j++) {
        float acc = csq[j];
        for (int64_t t = 0; t < d; t++) acc += z[t] * ct[t * k + j];
        merge(acc, j, best_v, best_i);
    }
}

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* Reduce 8 lanes to the smallest value, lowest index among equals. */
__attribute__((target("avx2,fma")))
static void lanes_min(__m256 v, __m256i i, float *out_v, int64_t *out_i) {
    float vs[8]; int32_t is[8];
    _mm256_storeu_ps(vs, v);
    _mm256_storeu_si256((__m256i *)is, i);
    float bv = vs[0]; int32_t bi = is[0];
    for (int l = 1; l < 8; l++)
        if (vs[l] < bv || (vs[l] == bv && is[l] < bi)) { bv = vs[l]; bi = is[l]; }
    *out_v = bv; *out_i = bi;
}

/* Four queries against codes [j0, j1) (j1 - j0 a multiple of 8). */
__attribute__((target("avx2,fma")))
static void tile4_avx2(const float *z, int64_t nq, const float *ct, const float *csq, int64_t k,
                       int64_t d, int64_t j0, int64_t j1, float *best_v, int64_t *best_i) {
    const float *z0 = z, *z1 = z + d * (nq > 1), *z2 = z + 2 * d * (nq > 2), *z3 = z + 3 * d * (nq > 3);
    const __m256 inf = _mm256_set1_ps(FLT_MAX);
    __m256 b0 = inf, b1 = inf, b2 = inf, b3 = inf;
    __m256i i0 = _mm256_setzero_si256(), i1 = i0, i2 = i0, i3 = i0;
    __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int32_t)j0));
    const __m256i step = _mm256_set1_epi32(8);
    for (int64_t j = j0; j < j1; j += 8) {
        __m256 a0 = _mm256_loadu_ps(csq + j), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t t = 0; t < d; t++) {
            __m256 c = _mm256_loadu_ps(ct + t * k + j);
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(z0 + t), c, a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(z1 + t), c, a1);
            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(z2 + t), c, a2);
            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(z3 + t), c, a3);
        }
        __m256 m;
        m = _mm256_cmp_ps(a0, b0, _CMP_LT_OQ); b0 = _mm256_blendv_ps(b0, a0, m);
        i0 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i0), _mm256_castsi256_ps(idx), m));
        m = _mm256_cmp_ps(a1, b1, _CMP_LT_OQ); b1 = _mm256_blendv_ps(b1, a1, m);
        i1 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i1), _mm256_castsi256_ps(idx), m));
        m = _mm256_cmp_ps(a2, b2, _CMP_LT_OQ); b2 = _mm256_blendv_ps(b2, a2, m);
        i2 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i2), _mm256_castsi256_ps(idx), m));
        m = _mm256_cmp_ps(a3, b3, _CMP_LT_OQ); b3 = _mm256_blendv_ps(b3, a3, m);
        i3 = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(i3), _mm256_castsi256_ps(idx), m));
        idx = _mm256_add_epi32(idx, step);
    }
    float v; int64_t i;
    lanes_min(b0, i0, &v, &i); merge(v, i, best_v + 0, best_i + 0);
    if (nq > 1) { lanes_min(b1, i1, &v, &i); merge(v, i, best_v + 1, best_i + 1); }
    if (nq > 2) { lanes_min(b2, i2, &v, &i); merge(v, i, best_v + 2, best_i + 2); }
    if (nq > 3) { lanes_min(b3, i3, &v, &i); merge(v, i, best_v + 3, best_i + 3); }
}
#endif

static void search_range(const float *z, const float *ct, const float *csq, int64_t *out,
                         int64_t n, int64_t d, int64_t k, int use_avx2) {
    float best_v[4];
    int64_t best_i[4];
    /* Running best per query across code tiles, kept in `out` (index) and a small value buffer. */
    float *bv = (float *)PyMem_RawMalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!bv) return;
    for (int64_t q = 0; q < n; q++) { bv[q] = FLT_MAX; out[q] = 0; }
    for (int64_t t0 = 0; t0 < k; t0 += CODE_TILE) {
        int64_t t1 = t0 + CODE_TILE < k ? t0 + CODE_TILE : k;
        int64_t vec_end = t0 + ((t1 - t0) & ~(int64_t)7);
        for (int64_t q = 0; q < n; q += 4) {
            int64_t nq = n - q < 4 ? n - q : 4;
            for (int64_t r = 0; r < nq; r++) { best_v[r] = bv[q + r]; best_i[r] = out[q + r]; }
#ifdef HAVE_AVX2_PATH
            if (use_avx2 && vec_end > t0)
                tile4_avx2(z + q * d, nq, ct, csq, k, d, t0, vec_end, best_v, best_i);
            else
                vec_end = t0;
#else
            vec_end = t0;
#endif
            for (int64_t r = 0; r < nq; r++) {
                tile_scalar(z + (q + r) * d, ct, csq, k, d, vec_end, t1, best_v + r, best_i + r);
                bv[q + r] = best_v[r]; out[q + r] = best_i[r];
            }
        }
    }
    PyMem_RawFree(bv);
}

static int cpu_has_avx2(void) {
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* nearest_l2(z_ptr, ct_ptr, csq_ptr, out_ptr, n, d, k): pointers to contiguous float32 z (n, d),
 * float32 -2 * codebook transposed (d, k), float32 squared norms (k,), int64 out (n,). */
static PyObject *py_nearest_l2(PyObject *self, PyObject *args) {
    unsigned long long zp, cp, sp, op;
    Py_ssize_t n, d, k;
    if (!PyArg_ParseTuple(args, "KKKKnnn", &zp, &cp, &sp, &op, &n, &d, &k)) return NULL;
    if (n < 0 || d < 1 || k < 1 || k > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "nearest_l2: bad sizes");
        return NULL;
    }
    int avx2 = cpu_has_avx2();
    Py_BEGIN_ALLOW_THREADS
    search_range((const float *)(uintptr_t)zp, (const float *)(uintptr_t)cp, (const float *)(uintptr_t)sp,
                 (int64_t *)(uintptr_t)op, n, d, k, avx2);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_has_avx2(PyObject *self, PyObject *args) { return PyBool_FromLong(cpu_has_avx2()); }

static PyMethodDef methods[] = {
    {"nearest_l2", py_nearest_l2, METH_VARARGS, "Fused nearest-code search over raw pointers (internal)."},
    {"has_avx2", py_has_avx2, METH_NOARGS, "Whether the AVX2+FMA path is used on this CPU."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_search", NULL, -1, methods};

PyMODINIT_FUNC PyInit__search(void) { return PyModule_Create(&module); }
