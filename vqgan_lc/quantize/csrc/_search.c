/* Fused nearest-code search for low-dimensional codes (the VQGAN-LC case: D' = 4 or 8).
 *
 * For each query row z_i it returns argmin_j ( ||c_j||^2 - 2 z_i . c_j ), ties to the lowest j,
 * without ever writing a distance matrix.
 *
 * The caller passes the codebook pre-scaled and transposed, ct = -2 c^T (D, K), and csq = ||c_j||^2,
 * so a distance is dist(i, j) = csq_j + sum_t z_it ct[t, j]. On the AVX2 path it is ALWAYS evaluated
 * as: start from csq_j, then one fused multiply-add per t = 0 .. D-1 in increasing t, so every code
 * gets the same float32 value whichever kernel computes it, and the result is the first index among
 * the exact minima of those values (what torch.argmin over the full row would return).
 * The Python side splits queries over threads; this function releases the GIL.
 *
 * Two AVX2 strategies give bit-identical results:
 *
 *  - Brute force (any D): codes are copied, one L1-sized tile at a time, into blocks of 16 codes
 *    [csq (16)] [ct row 0 (16)] ... [ct row D-1 (16)]. A register block of 4 queries x 16 codes is
 *    computed per step and only the running minimum VALUE per query (per lane) is kept over a tile.
 *    At the end of a tile, a query whose tile minimum is strictly below its best so far (rare after
 *    the first few tiles) rescans the tile alone with the same instruction sequence to find the
 *    first code reaching exactly that value. Tiles go in increasing code order and only a strictly
 *    smaller value replaces the best, so ties go to the lowest index.
 *
 *  - Pruned (D <= 16, at least PRUNE_MIN_N queries and PRUNE_MIN_K codes): a k-d tree (splits
 *    chosen on a sample) cuts the codes into 2^depth leaves, each packed the same way with a
 *    bounding box; super-leaves (subtrees of 8 leaves) have boxes too. With c_j = -ct[:, j] / 2 and
 *    delta_j = csq_j - ||c_j||^2 (about 0; any csq is handled), dist(i, j) = delta_j +
 *    ||z_i - c_j||^2 - ||z_i||^2, so the squared distance from z_i to a box bounds every code in it.
 *    Queries are sorted by their home leaf and handled in chunks: (1) each query scans its home
 *    leaf (queries sharing it go 4 at a time through the brute-force register block); (2) the
 *    leaves whose bound is <= best so far + ||z||^2 - min delta + a generous rounding margin
 *    (PRUNE_MARGIN = 1e-4 relative to the magnitudes involved, vs. float32 errors below D 2^-24) are
 *    listed per leaf and scanned leaf by leaf for all the queries that need them, nearest first,
 *    re-checking each bound against the query's improved best. A skipped leaf can hold neither a
 *    smaller nor an equal value. Leaves come in any order, so an equal value at a lower index also
 *    replaces the best (exact-equality rescans pick the smallest index). The bound is disabled
 *    (everything scanned) for non-finite values or magnitudes near overflow. When a chunk would
 *    scan over half of all (query, leaf) pairs (high intrinsic dimension), the remaining queries
 *    go to brute force.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Scalar fallback (non-x86 builds, or x86 CPUs without AVX2+FMA).                             */
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

/* Smallest code index (pidx of the packed positions) whose value equals `target` exactly, or -1. */
AVX2_INLINE int64_t rescanmin_impl(const float *zq, const float *p, int64_t nb, int64_t d, float target,
                                   const int32_t *pidx) {
    const __m256 tv = _mm256_set1_ps(target);
    const int64_t stride = BLK * (d + 1);
    int64_t best = -1;
    for (int64_t b = 0; b < nb; b++, p += stride) {
        __m256 a, c;
        DIST1(a, zq, p, 0, d);
        DIST1(c, zq, p, 1, d);
        unsigned mask = (unsigned)(_mm256_movemask_ps(_mm256_cmp_ps(a, tv, _CMP_EQ_OQ)) |
                                   (_mm256_movemask_ps(_mm256_cmp_ps(c, tv, _CMP_EQ_OQ)) << 8));
        while (mask) {
            const int64_t j = pidx[b * BLK + __builtin_ctz(mask)];
            mask &= mask - 1;
            if (j >= 0 && (best < 0 || j < best)) best = j;
        }
    }
    return best;
}

/* ---- Brute force ------------------------------------------------------------------------- */

typedef void (*block4_fn)(const float *, const float *, const float *, const float *, const float *, int64_t,
                          int64_t, __m256 *);
typedef int64_t (*rescan_fn)(const float *, const float *, int64_t, int64_t, float);
typedef int64_t (*rescanmin_fn)(const float *, const float *, int64_t, int64_t, float, const int32_t *);

static int64_t tile_blocks_for(int64_t d) {
    /* Keep a packed tile within about 16 KiB of L1. */
    int64_t nb = 16384 / (4 * BLK * (d + 1));
    return nb < 1 ? 1 : nb;
}

/* Brute force over all codes for queries [0, n). bv/out hold the best value/index so far (codes
 * are visited in increasing index order, so they must come from lower indices or be +inf/0). */
AVX2_FN static void search_brute_avx2(const float *z, const float *ct, const float *csq, int64_t *out, float *bv,
                              int64_t n, int64_t d, int64_t k, block4_fn blk, rescan_fn rs) {
    const int64_t tb = tile_blocks_for(d), stride = BLK * (d + 1), tile = tb * BLK;
    float *pack = (float *)PyMem_RawMalloc(sizeof(float) * (size_t)(tb * stride) + 64);
    if (!pack) return;
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
    PyMem_RawFree(pack);
}

/* ---- Pruned search: k-d tree leaves with bounding boxes ---------------------------------- */

#define LEAF_MIN 128       /* the tree has 2^depth leaves of LEAF_MIN to 2 LEAF_MIN codes on average */
#define SUPER 8             /* leaves per super-leaf (a subtree), whose box is tested first */
#define SAMPLES_PER_LEAF 16 /* codes sampled per leaf to choose the splits */
#define PRUNE_MAX_D 16      /* pruning pays off for low intrinsic dimension only */
#define PRUNE_MIN_N 512     /* queries per call needed to amortise building the tree */
#define PRUNE_MIN_K 4096
#define PRUNE_MARGIN 1e-4   /* relative slack of the skip test (float32 error is < D 2^-24) */
#define CHUNK_MAX 1024      /* queries whose leaf lists are built at once (fewer for many leaves) */

typedef struct {
    int64_t d, k, depth, nleaf, nsuper, nblocks;
    float *pack;        /* packed blocks of all leaves, leaf after leaf */
    int64_t *leaf_blk;  /* first block of each leaf; nleaf + 1 entries */
    int32_t *pidx;      /* code index of each packed position, -1 for padding */
    float *blo, *bhi;   /* leaf boxes in c space, (d, nleaf): box of leaf l is lo[t * nleaf + l] */
    float *slo, *shi;   /* super-leaf boxes, (d, nsuper8) */
    int64_t nsuper8;
    int32_t *ndim;      /* complete binary tree in heap order (node i has children 2i+1, 2i+2) */
    float *nval;        /* split value in ct space: right when ct[dim] (codes) or -2 z[dim] >= value */
    double dmin, amax, bmax; /* min_j csq_j - ||c_j||^2, max_j |csq_j|, max_j ||c_j|| */
    void *mem;
} kdx_t;

static void kdx_free(kdx_t *x) {
    PyMem_RawFree(x->mem);
    x->mem = NULL;
}

/* Leaf of the code / query whose ct-space coordinates are u[t * ustride]. */
static inline int64_t kdx_descend(const kdx_t *x, const float *u, int64_t ustride) {
    int64_t node = 0;
    for (int64_t dep = 0; dep < x->depth; dep++)
        node = 2 * node + 1 + (u[x->ndim[node] * ustride] >= x->nval[node]);
    return node - (x->nleaf - 1);
}

static int64_t kdx_home(const kdx_t *x, const float *zq) {
    float u[PRUNE_MAX_D];
    for (int64_t t = 0; t < x->d; t++) u[t] = -2.0f * zq[t];
    return kdx_descend(x, u, 1);
}

/* Builds the leaves. Returns 0 when pruning is not possible (non-finite data, no memory). */
static int kdx_build(kdx_t *x, const float *ct, const float *csq, int64_t d, int64_t k) {
    memset(x, 0, sizeof(*x));
    int finite = 1;
    for (int64_t j = 0; j < k; j++) finite &= (csq[j] - csq[j] == 0.0f);
    if (!finite) return 0;
    int64_t depth = 1;
    while ((k >> (depth + 1)) >= LEAF_MIN) depth++;
    const int64_t nleaf = (int64_t)1 << depth, nnode = nleaf - 1;
    const int64_t nsuper = nleaf >= SUPER ? nleaf / SUPER : 1, nsuper8 = (nsuper + 7) & ~(int64_t)7;
    const int64_t ns = SAMPLES_PER_LEAF * nleaf <= k ? SAMPLES_PER_LEAF * nleaf : k;
    /* Each leaf wastes less than one block. */
    const int64_t maxblocks = k / BLK + nleaf + 1;
    const int64_t stride = BLK * (d + 1);
    const int64_t nl8 = (nleaf + 7) & ~(int64_t)7;
    size_t bytes = sizeof(float) * (size_t)(maxblocks * stride)       /* pack */
                   + sizeof(int64_t) * (size_t)(nleaf + 1)            /* leaf_blk */
                   + sizeof(int32_t) * (size_t)(maxblocks * BLK)      /* pidx */
                   + 2 * sizeof(float) * (size_t)(d * nl8)            /* leaf boxes */
                   + 2 * sizeof(float) * (size_t)(d * nsuper8)        /* super-leaf boxes */
                   + sizeof(int32_t) * (size_t)nnode                  /* ndim */
                   + sizeof(float) * (size_t)nnode                    /* nval */
                   + sizeof(float) * (size_t)(ns * d)                 /* sample */
                   + sizeof(float) * (size_t)(k * d)                  /* codes as rows */
                   + 2 * sizeof(int32_t) * (size_t)k                  /* leaf of each code, perm */
                   + sizeof(int64_t) * (size_t)(nleaf + 1)            /* fill */
                   + 16 * 64;                                          /* alignment */
    char *mem = (char *)PyMem_RawMalloc(bytes);
    if (!mem) return 0;
    x->mem = mem;
    char *cur = (char *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
#define TAKE(ptr, type, count)                                                     \
    do {                                                                           \
        ptr = (type *)cur;                                                         \
        cur += sizeof(type) * (size_t)(count);                                     \
        cur = (char *)(((uintptr_t)cur + 63) & ~(uintptr_t)63);                    \
    } while (0)
    float *S, *P;
    int32_t *leafof, *perm;
    int64_t *fill;
    TAKE(x->pack, float, maxblocks * stride);
    TAKE(x->leaf_blk, int64_t, nleaf + 1);
    TAKE(x->pidx, int32_t, maxblocks * BLK);
    TAKE(x->blo, float, d * nl8);
    TAKE(x->bhi, float, d * nl8);
    TAKE(x->slo, float, d * nsuper8);
    TAKE(x->shi, float, d * nsuper8);
    TAKE(x->ndim, int32_t, nnode);
    TAKE(x->nval, float, nnode);
    TAKE(S, float, ns * d);
    TAKE(P, float, k * d);
    TAKE(leafof, int32_t, k);
    TAKE(perm, int32_t, k);
    TAKE(fill, int64_t, nleaf + 1);
#undef TAKE
    x->d = d; x->k = k; x->depth = depth; x->nleaf = nleaf; x->nsuper = nsuper; x->nsuper8 = nsuper8;

    /* The codes as rows of d floats (ct space), by blocks of 256 that stay in L1; every value must
     * be finite. */
    for (int64_t j0 = 0; j0 < k; j0 += 256) {
        const int64_t j1 = j0 + 256 < k ? j0 + 256 : k;
        for (int64_t t = 0; t < d; t++) {
            const float *row = ct + t * k;
            for (int64_t j = j0; j < j1; j++) {
                const float v = row[j];
                finite &= (v - v == 0.0f);
                P[j * d + t] = v;
            }
        }
    }
    if (!finite) { kdx_free(x); return 0; }
    /* Splits from a sample of the codes: each node splits its samples at the median of their
     * widest coordinate; in heap order, the samples of a node are a contiguous range. */
    for (int64_t s = 0; s < ns; s++) {
        const int64_t j = (int64_t)((double)s * (double)k / (double)ns);
        memcpy(S + s * d, P + j * d, sizeof(float) * (size_t)d);
    }
    for (int64_t node = 0; node < nnode; node++) {
        int64_t dep = 0;
        while (((int64_t)2 << dep) - 1 <= node) dep++;
        const int64_t first = ((int64_t)1 << dep) - 1, pos = node - first;
        const int64_t a = ns * pos >> dep, b = ns * (pos + 1) >> dep;
        /* the median row must split [a, b) where the children will look: at a + (b - a) / 2,
         * which is ns * (2 pos + 1) >> (dep + 1) as the children compute */
        float mn[PRUNE_MAX_D], mx[PRUNE_MAX_D];
        for (int64_t t = 0; t < d; t++) { mn[t] = INFINITY; mx[t] = -INFINITY; }
        for (int64_t s = a; s < b; s++)
            for (int64_t t = 0; t < d; t++) {
                const float v = S[s * d + t];
                mn[t] = v < mn[t] ? v : mn[t];
                mx[t] = v > mx[t] ? v : mx[t];
            }
        int64_t dim = 0;
        for (int64_t t = 1; t < d; t++)
            if (mx[t] - mn[t] > mx[dim] - mn[dim]) dim = t;
        const int64_t mid = ns * (2 * pos + 1) >> (dep + 1);
        x->ndim[node] = (int32_t)dim;
        if (b - a >= 2 && mid > a && mid < b) {
            /* median at row mid of [a, b): select within the range with kth = mid - a */
            float *R = S + a * d;
            const int64_t n = b - a, kth = mid - a;
            int64_t l = 0, r = n - 1;
            while (r > l) {
                const float x0 = R[l * d + dim], y0 = R[(l + (r - l) / 2) * d + dim], w0 = R[r * d + dim];
                float pv;
                if (x0 < y0) pv = y0 < w0 ? y0 : (x0 < w0 ? w0 : x0);
                else pv = x0 < w0 ? x0 : (y0 < w0 ? w0 : y0);
                int64_t i = l, j = r;
                while (i <= j) {
                    while (R[i * d + dim] < pv) i++;
                    while (R[j * d + dim] > pv) j--;
                    if (i <= j) {
                        float *p1 = R + i * d, *p2 = R + j * d;
                        for (int64_t t = 0; t < d; t++) { const float v = p1[t]; p1[t] = p2[t]; p2[t] = v; }
                        i++; j--;
                    }
                }
                if (kth <= j) r = j;
                else if (kth >= i) l = i;
                else break;
            }
            x->nval[node] = S[mid * d + dim];
        } else {
            x->nval[node] = b > a ? S[a * d + dim] : 0.0f;
        }
    }
    /* Leaf of every code. */
    for (int64_t l = 0; l <= nleaf; l++) fill[l] = 0;
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) { /* 8 independent descents at a time */
        int64_t nd[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t dep = 0; dep < depth; dep++)
            for (int r = 0; r < 8; r++)
                nd[r] = 2 * nd[r] + 1 + (P[(j + r) * d + x->ndim[nd[r]]] >= x->nval[nd[r]]);
        for (int r = 0; r < 8; r++) {
            leafof[j + r] = (int32_t)(nd[r] - (nleaf - 1));
            fill[nd[r] - (nleaf - 1) + 1]++;
        }
    }
    for (; j < k; j++) {
        const int64_t l = kdx_descend(x, P + j * d, 1);
        leafof[j] = (int32_t)l;
        fill[l + 1]++;
    }
    for (int64_t l = 0; l < nleaf; l++) fill[l + 1] += fill[l];
    /* codes of each leaf in increasing index order */
    for (j = 0; j < k; j++) perm[fill[leafof[j]]++] = (int32_t)j;
    /* fill[l] is now the end of leaf l in perm */
    float *pack = x->pack;
    double dmin = INFINITY, amax = 0.0, bmax = 0.0;
    int64_t nb = 0;
    for (int64_t l = 0, lo = 0; l < nleaf; l++) {
        const int64_t hi = fill[l], size = hi - lo, lnb = (size + BLK - 1) / BLK;
        x->leaf_blk[l] = nb;
        float *pb = pack + nb * stride;
        int32_t *pi = x->pidx + nb * BLK;
        float bl[PRUNE_MAX_D], bh[PRUNE_MAX_D];
        for (int64_t t = 0; t < d; t++) { bl[t] = INFINITY; bh[t] = -INFINITY; } /* empty: bound +inf */
        for (int64_t i = 0; i < lnb * BLK; i++) {
            float *e = pb + (i / BLK) * stride + i % BLK;
            if (i >= size) { /* padding: value NaN */
                e[0] = NAN;
                for (int64_t t = 0; t < d; t++) e[BLK * (t + 1)] = 0.0f;
                pi[i] = -1;
                continue;
            }
            const int32_t j = perm[lo + i];
            if (lo + i + 16 < k) { /* rows are visited in a scattered order */
                __builtin_prefetch(P + (int64_t)perm[lo + i + 16] * d);
                __builtin_prefetch(csq + perm[lo + i + 16]);
            }
            pi[i] = j;
            e[0] = csq[j];
            double sq = 0.0;
            const float *pt = P + j * d;
            for (int64_t t = 0; t < d; t++) {
                const float u = pt[t], c = -0.5f * u;
                e[BLK * (t + 1)] = u;
                bl[t] = c < bl[t] ? c : bl[t];
                bh[t] = c > bh[t] ? c : bh[t];
                sq += (double)c * (double)c;
            }
            const double delta = (double)csq[j] - sq, a = fabs((double)csq[j]);
            dmin = delta < dmin ? delta : dmin;
            amax = a > amax ? a : amax;
            bmax = sq > bmax ? sq : bmax;
        }
        for (int64_t t = 0; t < d; t++) { x->blo[t * nl8 + l] = bl[t]; x->bhi[t * nl8 + l] = bh[t]; }
        nb += lnb;
        lo = hi;
    }
    x->leaf_blk[nleaf] = nb;
    x->nblocks = nb;
    for (int64_t t = 0; t < d; t++)
        for (int64_t g = 0; g < nsuper8; g++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int64_t l = g * SUPER; l < (g + 1) * SUPER && l < nleaf && g < nsuper; l++) {
                lo = x->blo[t * nl8 + l] < lo ? x->blo[t * nl8 + l] : lo;
                hi = x->bhi[t * nl8 + l] > hi ? x->bhi[t * nl8 + l] : hi;
            }
            x->slo[t * nsuper8 + g] = lo; x->shi[t * nsuper8 + g] = hi;
        }
    x->dmin = dmin; x->amax = amax; x->bmax = sqrt(bmax);
    return 1;
}

/* Skip threshold for the leaf bounds of a query with ||zq||^2 = zsq whose best value so far is
 * `best`: a leaf whose bound is > the returned value holds no value <= best. +inf (scan all) when
 * the bound cannot be trusted (non-finite values, magnitudes near float overflow). */
static float kdx_thresh(const kdx_t *x, float best, double zsq) {
    if (!isfinite(best) || !(zsq < 1e36)) return INFINITY;
    const double b = (double)best, scale = x->amax + 2.0 * sqrt(zsq) * x->bmax;
    if (!(scale < 1e36)) return INFINITY;
    const double t = b + zsq - x->dmin + PRUNE_MARGIN * (fabs(b) + zsq + fabs(x->dmin) + scale) + 1e-30;
    return t < (double)FLT_MAX ? (float)t : INFINITY;
}

/* Squared distances from zq to 8 boxes (lo/hi rows of stride ld), NaN for a non-finite zq. */
AVX2_INLINE __m256 box_lb8(const float *zq, const float *lo, const float *hi, int64_t ld, int64_t d) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc = zero;
#pragma GCC unroll 16
    for (int64_t t = 0; t < d; t++) {
        const __m256 zt = _mm256_broadcast_ss(zq + t);
        __m256 gap = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(lo + t * ld), zt),
                                   _mm256_sub_ps(zt, _mm256_loadu_ps(hi + t * ld)));
        gap = _mm256_max_ps(gap, zero);
        acc = _mm256_fmadd_ps(gap, gap, acc);
    }
    return acc;
}

/* Leaves (other than `skip`) whose bound for zq is not above thr, appended to outl; returns their
 * count, or -1 if more than `cap`. A super-leaf whose box bound is above thr is skipped whole
 * (its box holds the boxes of its leaves, so its bound is a lower bound of theirs). */
AVX2_INLINE int64_t lbemit_impl(const kdx_t *x, const float *zq, int64_t d, float thr, int64_t skip, int32_t *outl,
                                float *outv, int64_t cap) {
    const int64_t nl8 = (x->nleaf + 7) & ~(int64_t)7, nleaf = x->nleaf;
    const __m256 tv = _mm256_set1_ps(thr);
    int64_t cnt = 0;
    if (nleaf < SUPER) {
        for (int64_t g = 0; g < nl8; g += 8) {
            /* not-greater (unordered: true), so a NaN bound is scanned */
            float lbv[8];
            const __m256 lb = box_lb8(zq, x->blo + g, x->bhi + g, nl8, d);
            _mm256_storeu_ps(lbv, lb);
            unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(lb, tv, _CMP_NGT_UQ));
            while (mask) {
                const int64_t l = g + __builtin_ctz(mask);
                mask &= mask - 1;
                if (l >= nleaf || l == skip) continue;
                if (cnt >= cap) return -1;
                outv[cnt] = lbv[l - g];
                outl[cnt++] = (int32_t)l;
            }
        }
        return cnt;
    }
    for (int64_t sg = 0; sg < x->nsuper8; sg += 8) {
        unsigned smask = (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(box_lb8(zq, x->slo + sg, x->shi + sg, x->nsuper8, d), tv, _CMP_NGT_UQ));
        while (smask) {
            const int64_t sl = sg + __builtin_ctz(smask);
            smask &= smask - 1;
            if (sl >= x->nsuper) continue;
            const int64_t g = sl * SUPER; /* SUPER == 8 leaves: one vector */
            float lbv[8];
            const __m256 lb = box_lb8(zq, x->blo + g, x->bhi + g, nl8, d);
            _mm256_storeu_ps(lbv, lb);
            unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(lb, tv, _CMP_NGT_UQ));
            while (mask) {
                const int64_t l = g + __builtin_ctz(mask);
                mask &= mask - 1;
                if (l == skip) continue;
                if (cnt >= cap) return -1;
                outv[cnt] = lbv[l - g];
                outl[cnt++] = (int32_t)l;
            }
        }
    }
    return cnt;
}

typedef int64_t (*lbemit_fn)(const kdx_t *, const float *, int64_t, float, int64_t, int32_t *, float *, int64_t);

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
    }                                                                                                      \
    AVX2_FN static int64_t rescanmin_##NAME(const float *zq, const float *p, int64_t nb, int64_t d,        \
                                            float target, const int32_t *pidx) {                           \
        (void)d;                                                                                           \
        return rescanmin_impl(zq, p, nb, DEXPR, target, pidx);                                             \
    }                                                                                                      \
    AVX2_FN static int64_t lbemit_##NAME(const kdx_t *x, const float *zq, int64_t d, float thr,            \
                                         int64_t skip, int32_t *outl, float *outv, int64_t cap) {          \
        (void)d;                                                                                           \
        return lbemit_impl(x, zq, DEXPR, thr, skip, outl, outv, cap);                                      \
    }

DEFINE_KERNELS(d4, 4)
DEFINE_KERNELS(d8, 8)
DEFINE_KERNELS(d16, 16)
DEFINE_KERNELS(dn, d)

typedef struct {
    block4_fn blk;
    rescan_fn rs;
    rescanmin_fn rsm;
    lbemit_fn lbe;
} kernels_t;

static kernels_t kernels_for(int64_t d) {
    kernels_t f = {block4_dn, rescan_dn, rescanmin_dn, lbemit_dn};
    if (d == 4) { kernels_t g = {block4_d4, rescan_d4, rescanmin_d4, lbemit_d4}; f = g; }
    else if (d == 8) { kernels_t g = {block4_d8, rescan_d8, rescanmin_d8, lbemit_d8}; f = g; }
    else if (d == 16) { kernels_t g = {block4_d16, rescan_d16, rescanmin_d16, lbemit_d16}; f = g; }
    return f;
}

typedef struct {
    float *best, *thr; /* CHUNK: best value so far, and skip threshold of the leaf bounds */
    double *zsq;       /* CHUNK: ||z||^2 */
    int64_t *bi;       /* CHUNK: index of the best value */
    int32_t *iota;     /* CHUNK: 0, 1, 2, ... */
    int32_t *tmp;      /* CHUNK */
    int32_t *pl, *ps;  /* (leaf, slot) pairs, cap */
    float *pv;         /* bound of each pair, cap */
    unsigned char *near; /* pair goes to the first round, cap */
    int32_t *list;     /* slots grouped by leaf, cap */
    float *listv;      /* their bounds, cap */
    int64_t *lcnt;     /* nleaf + 1 */
    int64_t cap;
} chunk_buf_t;

/* Scans leaf l for the queries slots[0..ns) of a chunk (query ids qs[slot]) and merges the leaf
 * into their (best, bi): a smaller value, or an equal value of a smaller index, wins. With lbs,
 * a slot is skipped if its bound lbs[i] is now above its threshold. Returns the slots scanned. */
AVX2_FN static int64_t visit_leaf(const kdx_t *x, const kernels_t *f, int64_t l, const float *z, const int64_t *qs,
                                  const int32_t *slots, const float *lbs, int64_t ns, int64_t d, chunk_buf_t *cb) {
    float *best = cb->best;
    int64_t *bi = cb->bi;
    if (lbs) {
        int64_t m = 0;
        for (int64_t i = 0; i < ns; i++)
            if (!(lbs[i] > cb->thr[slots[i]])) cb->tmp[m++] = slots[i];
        slots = cb->tmp;
        ns = m;
    }
    const int64_t b0 = x->leaf_blk[l], nb = x->leaf_blk[l + 1] - b0;
    const float *p = x->pack + b0 * BLK * (d + 1);
    const int32_t *pidx = x->pidx + b0 * BLK;
    __m256 m[4];
    for (int64_t g = 0; g < ns; g += 4) {
        const int64_t nq = ns - g < 4 ? ns - g : 4;
        const float *zp[4];
        for (int64_t r = 0; r < 4; r++) zp[r] = z + qs[slots[g + (r < nq ? r : 0)]] * d;
        f->blk(zp[0], zp[1], zp[2], zp[3], p, nb, d, m);
        for (int64_t r = 0; r < nq; r++) {
            const int32_t s = slots[g + r];
            const float v = hmin8(m[r]);
            if (v <= best[s]) {
                const int64_t j = f->rsm(zp[r], p, nb, d, v, pidx);
                if (j >= 0 && (v < best[s] || j < bi[s])) {
                    best[s] = v; bi[s] = j;
                    cb->thr[s] = kdx_thresh(x, v, cb->zsq[s]);
                }
            }
        }
    }
    return ns * nb;
}

#define NEAR_FRAC 0.25f     /* bounds below this fraction of the threshold go to the first round */

/* Exact search for the queries qs[0..nq) (sorted by home leaf). Returns 0, with nothing written, if
 * pruning would scan too much (then the caller falls back to brute force). */
AVX2_FN static int prune_chunk(const kdx_t *x, const kernels_t *f, const float *z, const int64_t *qs,
                               const int64_t *home, int64_t nq, int64_t d, float *bv, int64_t *out, chunk_buf_t *cb,
                               int64_t *scanned) {
    const int64_t nleaf = x->nleaf;
    for (int64_t s = 0; s < nq; s++) {
        const float *zq = z + qs[s] * d;
        double zsq = 0.0;
        for (int64_t t = 0; t < d; t++) zsq += (double)zq[t] * (double)zq[t];
        cb->zsq[s] = zsq;
        cb->best[s] = INFINITY; cb->bi[s] = 0; cb->thr[s] = INFINITY;
    }
    /* Phase 1: every query against its home leaf, queries sharing a home leaf together. */
    for (int64_t s = 0; s < nq;) {
        const int64_t h = home[qs[s]];
        int64_t e = s + 1;
        while (e < nq && home[qs[e]] == h) e++;
        *scanned += visit_leaf(x, f, h, z, qs, cb->iota + s, NULL, e - s, d, cb);
        s = e;
    }
    /* Phase 2: the other leaves that may hold a value <= the best so far, leaf by leaf; first the
     * nearest ones (they tighten the thresholds), then the others still needed. */
    /* More (query, leaf) pairs than half of all of them: pruning does not pay, use brute force. */
    const int64_t cap = nq * nleaf / 2 + nq;
    int64_t np = 0;
    for (int64_t s = 0; s < nq; s++) {
        const float thr = cb->thr[s];
        const int64_t c = f->lbe(x, z + qs[s] * d, d, thr, home[qs[s]], cb->pl + np, cb->pv + np, cap - np);
        if (c < 0) return 0;
        const float nearv = NEAR_FRAC * thr;
        for (int64_t i = np; i < np + c; i++) { cb->ps[i] = (int32_t)s; cb->near[i] = !(cb->pv[i] > nearv); }
        np += c;
    }
    int64_t *lcnt = cb->lcnt;
    for (int round = 1; round >= 0; round--) {
        for (int64_t l = 0; l <= nleaf; l++) lcnt[l] = 0;
        for (int64_t i = 0; i < np; i++)
            if (cb->near[i] == round) lcnt[cb->pl[i] + 1]++;
        for (int64_t l = 0; l < nleaf; l++) lcnt[l + 1] += lcnt[l];
        for (int64_t i = 0; i < np; i++)
            if (cb->near[i] == round) {
                const int64_t at = lcnt[cb->pl[i]]++;
                cb->list[at] = cb->ps[i];
                cb->listv[at] = cb->pv[i];
            }
        /* lcnt[l] is now the end of leaf l's run (= start of leaf l + 1) */
        for (int64_t l = 0, start = 0; l < nleaf; l++) {
            const int64_t end = lcnt[l];
            if (end > start) *scanned += visit_leaf(x, f, l, z, qs, cb->list + start, cb->listv + start, end - start, d, cb);
            start = end;
        }
    }
    for (int64_t s = 0; s < nq; s++) { bv[qs[s]] = cb->best[s]; out[qs[s]] = cb->bi[s]; }
    return 1;
}

/* Brute force for the queries qs[0..nq), gathered into a contiguous run. */
AVX2_FN static void brute_gather(const float *z, const int64_t *qs, int64_t nq, const float *ct, const float *csq,
                         int64_t *out, float *bv, int64_t d, int64_t k, const kernels_t *f) {
    char *m2 = (char *)PyMem_RawMalloc((sizeof(float) * (size_t)(d + 1) + sizeof(int64_t)) * (size_t)nq + 64);
    if (m2) {
        float *zr = (float *)m2, *bvr = zr + nq * d;
        int64_t *outr = (int64_t *)(((uintptr_t)(bvr + nq) + 7) & ~(uintptr_t)7);
        for (int64_t u = 0; u < nq; u++) {
            memcpy(zr + u * d, z + qs[u] * d, sizeof(float) * (size_t)d);
            bvr[u] = INFINITY; outr[u] = 0;
        }
        search_brute_avx2(zr, ct, csq, outr, bvr, nq, d, k, f->blk, f->rs);
        for (int64_t u = 0; u < nq; u++) { bv[qs[u]] = bvr[u]; out[qs[u]] = outr[u]; }
        PyMem_RawFree(m2);
    } else {
        for (int64_t u = 0; u < nq; u++) {
            const int64_t q = qs[u];
            bv[q] = INFINITY; out[q] = 0;
            search_brute_avx2(z + q * d, ct, csq, out + q, bv + q, 1, d, k, f->blk, f->rs);
        }
    }
}

/* Pruned search for queries [0, n); returns 0 if it could not run (then nothing was written). */
AVX2_FN static int search_pruned_avx2(const float *z, const float *ct, const float *csq, int64_t *out, float *bv,
                              int64_t n, int64_t d, int64_t k, const kernels_t *f) {
    kdx_t x;
    if (!kdx_build(&x, ct, csq, d, k)) return 0;
    const int64_t nleaf = x.nleaf;
    chunk_buf_t cb;
    int64_t chunk = ((int64_t)1 << 19) / nleaf;
    chunk = chunk < 16 ? 16 : chunk > CHUNK_MAX ? CHUNK_MAX : chunk;
    const int64_t CHUNK = chunk;
    cb.cap = CHUNK * nleaf / 2 + CHUNK;
    const size_t bytes = sizeof(int64_t) * (size_t)(2 * n + CHUNK + nleaf + 1) + sizeof(double) * CHUNK +
                         sizeof(float) * 2 * CHUNK + sizeof(int32_t) * 2 * CHUNK +
                         (size_t)cb.cap * (4 * sizeof(int32_t) + 2 * sizeof(float) + 1) + 64;
    char *mem = (char *)PyMem_RawMalloc(bytes);
    if (!mem) { kdx_free(&x); return 0; }
    int64_t *order = (int64_t *)mem, *home = order + n;
    cb.bi = home + n;
    cb.lcnt = cb.bi + CHUNK;
    cb.zsq = (double *)(cb.lcnt + nleaf + 1);
    cb.best = (float *)(cb.zsq + CHUNK);
    cb.thr = cb.best + CHUNK;
    cb.iota = (int32_t *)(cb.thr + CHUNK);
    cb.tmp = cb.iota + CHUNK;
    cb.pl = cb.tmp + CHUNK;
    cb.ps = cb.pl + cb.cap;
    cb.list = cb.ps + cb.cap;
    cb.pv = (float *)(cb.list + cb.cap);
    cb.listv = cb.pv + cb.cap;
    cb.near = (unsigned char *)(cb.listv + cb.cap);
    for (int64_t s = 0; s < CHUNK; s++) cb.iota[s] = (int32_t)s;
    /* Queries in the order of their home leaves: a chunk covers a compact region of space. */
    int64_t *cnt = cb.lcnt;
    for (int64_t l = 0; l <= nleaf; l++) cnt[l] = 0;
    for (int64_t q = 0; q < n; q++) { home[q] = kdx_home(&x, z + q * d); cnt[home[q] + 1]++; }
    for (int64_t l = 0; l < nleaf; l++) cnt[l + 1] += cnt[l];
    for (int64_t q = 0; q < n; q++) order[cnt[home[q]]++] = q;
    int64_t i = 0, scanned = 0;
    for (; i < n; i += CHUNK) {
        const int64_t nq = n - i < CHUNK ? n - i : CHUNK;
        if (!prune_chunk(&x, f, z, order + i, home, nq, d, bv, out, &cb, &scanned)) break;
    }
    kdx_free(&x);
    if (i < n) brute_gather(z, order + i, n - i, ct, csq, out, bv, d, k, f);
    PyMem_RawFree(mem);
    return 1;
}

AVX2_FN static void search_avx2(const float *z, const float *ct, const float *csq, int64_t *out, float *bv,
                                int64_t n, int64_t d, int64_t k) {
    const kernels_t f = kernels_for(d);
    if (d <= PRUNE_MAX_D && n >= PRUNE_MIN_N && k >= PRUNE_MIN_K && search_pruned_avx2(z, ct, csq, out, bv, n, d, k, &f))
        return;
    search_brute_avx2(z, ct, csq, out, bv, n, d, k, f.blk, f.rs);
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

static void search_range(const float *z, const float *ct, const float *csq, int64_t *out, int64_t n, int64_t d,
                         int64_t k, int use_avx2) {
    /* Running best per query: index in `out`, value in `bv`. */
    float *bv = (float *)PyMem_RawMalloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!bv) return;
    for (int64_t q = 0; q < n; q++) { bv[q] = INFINITY; out[q] = 0; }
#ifdef HAVE_AVX2_PATH
    if (use_avx2)
        search_avx2(z, ct, csq, out, bv, n, d, k);
    else
        search_scalar(z, ct, csq, out, bv, n, d, k);
#else
    (void)use_avx2;
    search_scalar(z, ct, csq, out, bv, n, d, k);
#endif
    PyMem_RawFree(bv);
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
