// The x86-64 kernels of decode attention (CDecode.h), each compiled for its instruction set by a
// target attribute; the lane walk is lean_lanes.h's, the block steps are here. Scores: the dot products of TESSERA_LEAN_ROW_TILE rows (16 on
// AVX-512, 8 on AVX2 at a time) accumulate in one register per row, then one transposing
// reduction tree turns those registers into a vector of the rows' sums, so no row pays for a
// horizontal sum of its own; a row's sum takes the same steps whichever rows surround it.
// Weighted V: the lane's running output is loaded (rescaled) into registers, the block's rows
// added in two sets (even and odd rows), and stored back unnormalised.
#include "lean_lanes.h"

#if defined(__x86_64__)
#include <immintrin.h>

/// Fetches the lines of [p + from, p + to) bytes into L1. The next block's K is fetched 16 rows
/// at a time while this block's scores are computed, its V while this V is weighted: without it
/// the hardware prefetchers left the kernel at a third of memory bandwidth (they follow each
/// 16 KiB block, not the jump to the next); into L1 measured 5-10% faster than into L2.
static inline __attribute__((always_inline)) void prefetch_bytes(const float *p, long from, long to) {
    for (long b = from; b < to; b += 64) _mm_prefetch((const char *)p + b, _MM_HINT_T0);
}

/// e^x for x in [-87.3, 88.7] (clamped): x = n·ln2 + r and a degree-6 polynomial in r, the
/// steps of VectorMath.exp. One body for both widths: P is the intrinsics' prefix, V and I the
/// float and integer vectors, S the integer cast's suffix.
#define TESSERA_LEAN_EXP(NAME, TARGET, P, V, I, S) \
static inline __attribute__((always_inline, target(TARGET))) V NAME(V x) { \
    x = P##_min_ps(P##_max_ps(x, P##_set1_ps(-87.3f)), P##_set1_ps(88.7f)); \
    const V magic = P##_set1_ps(12582912.0f); \
    V shifted = P##_fmadd_ps(x, P##_set1_ps(1.44269504f), magic); \
    V n = P##_sub_ps(shifted, magic); \
    V r = P##_fmadd_ps(n, P##_set1_ps(-0.693145751953125f), x); \
    r = P##_fmadd_ps(n, P##_set1_ps(-1.428606765330187045e-6f), r); \
    V p = P##_fmadd_ps(P##_set1_ps(1.0f / 720), r, P##_set1_ps(1.0f / 120)); \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f / 24)); \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f / 6)); \
    p = P##_fmadd_ps(p, r, P##_set1_ps(0.5f)); \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f)); \
    p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f)); \
    I e = P##_sub_epi32(P##_castps_##S(shifted), P##_castps_##S(magic)); \
    e = P##_slli_epi32(P##_add_epi32(e, P##_set1_epi32(127)), 23); \
    return P##_mul_ps(p, P##_cast##S##_ps(e)); \
}
TESSERA_LEAN_EXP(exp16, "avx512f", _mm512, __m512, __m512i, si512)
TESSERA_LEAN_EXP(exp8, "avx2,fma", _mm256, __m256, __m256i, si256)

/// The running sum and maximum after a block of sum `total` (one function, so every AVX-512 step
/// rounds it alike: whether st[1] · alpha + total contracts into one multiply-add is the compiler's).
static inline __attribute__((always_inline, target("avx512f")))
void lean_settle(float *st, int first, float alpha, float total, float maximum) {
    st[1] = first ? total : st[1] * alpha + total;
    st[0] = maximum;
}

/// Lane i of the result = the sum of the 16 lanes of a[i].
static inline __attribute__((always_inline, target("avx512f"))) __m512 row_sums16(const __m512 a[16]) {
    static const int order[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    __m512 s1[8], s2[4], s3[2];
    for (int i = 0; i < 8; i++)      // 128-bit lanes: row 2i (halves), row 2i + 1 (halves)
        s1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                              _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)      // 128-bit lane k: row 4i + k (4 partials)
        s2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s1[2 * i], s1[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(s1[2 * i], s1[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)      // lane k: rows 8i + k, 8i + 4 + k (2 partials each)
        s3[i] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], 0x44),
                              _mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], 0xEE));
    // Lane k: rows k, 4 + k, 8 + k, 12 + k: float 4k + m holds row 4m + k.
    __m512 s4 = _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], 0x88), _mm512_shuffle_ps(s3[0], s3[1], 0xDD));
    return _mm512_permutexvar_ps(_mm512_loadu_si512(order), s4);
}

/// acc[r] = the products q · k_r of row r < n (D = 16·chunks − 16 + the lanes of `tail`),
/// summed in 16 lanes in chunk order; acc[r] = 0 for r ≥ n. Rows are read one after another,
/// each whole (the order the hardware prefetcher follows). Called with constants where it can.
static inline __attribute__((always_inline, target("avx512f")))
void scores16(__m512 acc[16], const long chunks, const float *q, const float *k, const long n, const __mmask16 tail) {
    const long D = 16 * (chunks - 1) + __builtin_popcount(tail);
    for (int r = 0; r < 16; r++) {
        acc[r] = _mm512_setzero_ps();
        if (r >= n) continue;
        for (long c = 0; c < chunks; c++) {
            const __mmask16 m = c == chunks - 1 ? tail : (__mmask16)0xFFFF;
            acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + 16 * c), _mm512_maskz_loadu_ps(m, k + r * D + 16 * c), acc[r]);
        }
    }
}

static __attribute__((noinline, target("avx512f")))
void step_avx512_any(long D, long G, long rows, float scale, const float *q, const float *k, const float *v,
                     float *out, long head_stride, float *state, int first, float *scores, long score_stride,
                     const float *next_k, const float *next_v, long next_rows) {
    const long chunks = (D + 15) / 16, row_bytes = D * 4;
    const __mmask16 tail = (D % 16) ? (__mmask16)((1u << (D % 16)) - 1) : (__mmask16)0xFFFF;
    for (long g = 0; g < G; g++) {
        const float *qg = q + g * D;
        float *s = scores + g * score_stride, *record = out + g * head_stride;
        // Scores, 16 rows at a time (rows past the end read nothing and give 0).
        for (long j0 = 0; j0 < rows; j0 += 16) {
            if (g == 0 && next_k && j0 < next_rows)
                prefetch_bytes(next_k, j0 * row_bytes, (j0 + 16 < next_rows ? j0 + 16 : next_rows) * row_bytes);
            const long n = rows - j0 < 16 ? rows - j0 : 16;
            __m512 acc[16];
            if (n == 16 && chunks == 4 && tail == (__mmask16)0xFFFF) scores16(acc, 4, qg, k + j0 * D, 16, 0xFFFF);
            else scores16(acc, chunks, qg, k + j0 * D, n, tail);
            _mm512_storeu_ps(s + j0, _mm512_mul_ps(row_sums16(acc), _mm512_set1_ps(scale)));
        }
        // p = exp(s - max), its sum.
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        for (long j0 = 0; j0 < rows; j0 += 16) {
            const __mmask16 m = rows - j0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (rows - j0)) - 1);
            vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_loadu_ps(s + j0));
        }
        float maximum, *st = state + 2 * g;
        const float alpha = lean_rescale(st, first, _mm512_reduce_max_ps(vmax), &maximum);
        __m512 vsum = _mm512_setzero_ps();
        for (long j0 = 0; j0 < rows; j0 += 16) {
            const __mmask16 m = rows - j0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (rows - j0)) - 1);
            __m512 p = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j0), _mm512_set1_ps(maximum))));
            _mm512_storeu_ps(s + j0, p);
            vsum = _mm512_add_ps(vsum, p);
        }
        lean_settle(st, first, alpha, _mm512_reduce_add_ps(vsum), maximum);
        // o = alpha · o + Σ p_j v_j, 64 columns at a time, in registers across the rows.
        for (long c0 = 0; c0 < chunks; c0 += 4) {
            __mmask16 m[4];
            for (int i = 0; i < 4; i++)
                m[i] = c0 + i < chunks - 1 ? (__mmask16)0xFFFF : c0 + i == chunks - 1 ? tail : (__mmask16)0;
            __m512 even[4], odd[4];
            for (int i = 0; i < 4; i++) {
                odd[i] = _mm512_setzero_ps();
                even[i] = first ? odd[i] : _mm512_maskz_loadu_ps(m[i], record + 16 * (c0 + i));
                if (alpha != 1) even[i] = _mm512_mul_ps(even[i], _mm512_set1_ps(alpha));
            }
            const float *column = v + 16 * c0;
            long j = 0;
            for (; j + 2 <= rows; j += 2) {
                if (g == 0 && c0 == 0 && next_v && (j & 15) == 0 && j < next_rows)
                    prefetch_bytes(next_v, j * row_bytes, (j + 16 < next_rows ? j + 16 : next_rows) * row_bytes);
                const __m512 p0 = _mm512_set1_ps(s[j]), p1 = _mm512_set1_ps(s[j + 1]);
                const float *v0 = column + j * D, *v1 = v0 + D;
                for (int i = 0; i < 4; i++) {
                    even[i] = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m[i], v0 + 16 * i), even[i]);
                    odd[i] = _mm512_fmadd_ps(p1, _mm512_maskz_loadu_ps(m[i], v1 + 16 * i), odd[i]);
                }
            }
            if (j < rows) {
                const __m512 p0 = _mm512_set1_ps(s[j]);
                for (int i = 0; i < 4; i++)
                    even[i] = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m[i], column + j * D + 16 * i), even[i]);
            }
            for (int i = 0; i < 4; i++)
                _mm512_mask_storeu_ps(record + 16 * (c0 + i), m[i], _mm512_add_ps(even[i], odd[i]));
        }
    }
}

/// The scores of 16 rows for D = 64 (k: the first row), q in registers: the steps of scores16
/// and row_sums16, so the same bits, with the accumulators kept in registers. With `fetch`, row
/// r of `next` is fetched into L1 along with row r (spread: measured 3-5% faster at 32k-131k
/// positions than the 16 rows at once of the other widths, and bunched it fell to 0.65-0.75 of
/// memread once the arithmetic was fast).
static inline __attribute__((always_inline, target("avx512f")))
__m512 tile_d64(const __m512 q[4], const float *k, __m512 scale, const float *next, const int fetch) {
    __m512 acc[16];
#pragma unroll
    for (int r = 0; r < 16; r++) {
        if (fetch) prefetch_bytes(next, 256 * r, 256 * (r + 1));
        __m512 a = _mm512_setzero_ps();
        for (int c = 0; c < 4; c++) a = _mm512_fmadd_ps(q[c], _mm512_loadu_ps(k + 64 * r + 16 * c), a);
        acc[r] = a;
    }
    return _mm512_mul_ps(row_sums16(acc), scale);
}

/// Rows j and j + 1 of a block's weighted V for D = 64, into the even and odd sums (s: the weights).
static inline __attribute__((always_inline, target("avx512f")))
void weigh_d64(__m512 even[4], __m512 odd[4], const float *s, const float *v, const long j) {
    const __m512 p0 = _mm512_set1_ps(s[j]), p1 = _mm512_set1_ps(s[j + 1]);
    for (int i = 0; i < 4; i++) {
        even[i] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(v + j * 64 + 16 * i), even[i]);
        odd[i] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(v + (j + 1) * 64 + 16 * i), odd[i]);
    }
}

/// One query head's step_avx512 for D = 64 and a block of 64 rows: the same operations in the
/// same order (the same bits), unrolled with the block's scores and output in registers. With
/// `fetch`, the next block (next_k, next_v: 64 rows) is fetched into L1 meanwhile.
static inline __attribute__((always_inline, target("avx512f")))
void head_d64(float scale, const float *qg, const float *k, const float *v, float *record, float *st, int first,
              float *s, const float *next_k, const float *next_v, const int fetch) {
    const __m512 vscale = _mm512_set1_ps(scale);
    const __m512 qv[4] = {_mm512_loadu_ps(qg), _mm512_loadu_ps(qg + 16), _mm512_loadu_ps(qg + 32), _mm512_loadu_ps(qg + 48)};
    __m512 t[4];
    for (int i = 0; i < 4; i++) t[i] = tile_d64(qv, k + 1024 * i, vscale, fetch ? next_k + 1024 * i : NULL, fetch);
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < 4; i++) vmax = _mm512_mask_max_ps(vmax, (__mmask16)0xFFFF, vmax, t[i]);
    float maximum;
    const float alpha = lean_rescale(st, first, _mm512_reduce_max_ps(vmax), &maximum);
    __m512 vsum = _mm512_setzero_ps();
    for (int i = 0; i < 4; i++) {
        t[i] = exp16(_mm512_sub_ps(t[i], _mm512_set1_ps(maximum)));
        _mm512_storeu_ps(s + 16 * i, t[i]);
        vsum = _mm512_add_ps(vsum, t[i]);
    }
    lean_settle(st, first, alpha, _mm512_reduce_add_ps(vsum), maximum);
    __m512 even[4], odd[4];
    for (int i = 0; i < 4; i++) {
        odd[i] = _mm512_setzero_ps();
        even[i] = first ? odd[i] : _mm512_loadu_ps(record + 16 * i);
        if (alpha != 1) even[i] = _mm512_mul_ps(even[i], _mm512_set1_ps(alpha));
    }
#pragma unroll
    for (long j = 0; j < 64; j += 2) {
        if (fetch) prefetch_bytes(next_v, j * 256, (j + 2) * 256);
        weigh_d64(even, odd, s, v, j);
    }
    for (int i = 0; i < 4; i++) _mm512_storeu_ps(record + 16 * i, _mm512_add_ps(even[i], odd[i]));
}

/// step_avx512 for D = 64 and a block of 64 rows (the bench models' heads, LeanAttention's
/// default block); the first head fetches the next block (a partial one all at once up front).
static inline __attribute__((always_inline, target("avx512f")))
void step_avx512_d64(long G, float scale, const float *q, const float *k, const float *v,
                     float *out, long head_stride, float *state, int first, float *scores, long score_stride,
                     const float *next_k, const float *next_v, long next_rows) {
    if (next_k && next_rows == 64) {
        head_d64(scale, q, k, v, out, state, first, scores, next_k, next_v, 1);
    } else {
        if (next_k) { prefetch_bytes(next_k, 0, next_rows * 256); prefetch_bytes(next_v, 0, next_rows * 256); }
        head_d64(scale, q, k, v, out, state, first, scores, NULL, NULL, 0);
    }
    for (long g = 1; g < G; g++)
        head_d64(scale, q + g * 64, k, v, out + g * head_stride, state + 2 * g, first, scores + g * score_stride, NULL, NULL, 0);
}

static __attribute__((target("avx512f")))
void step_avx512(long D, long G, long rows, float scale, const float *q, const float *k, const float *v,
                 float *out, long head_stride, float *state, int first, float *scores, long score_stride,
                 const float *next_k, const float *next_v, long next_rows) {
    if (D == 64 && rows == 64)
        step_avx512_d64(G, scale, q, k, v, out, head_stride, state, first, scores, score_stride, next_k, next_v, next_rows);
    else
        step_avx512_any(D, G, rows, scale, q, k, v, out, head_stride, state, first, scores, score_stride, next_k, next_v, next_rows);
}

LEAN_LANES_DEFINE(tessera_lean_lanes_avx512, step_avx512, __attribute__((target("avx512f"))))
LEAN_LANES_DEFINE(tessera_lean_lanes_avx512_any, step_avx512_any, __attribute__((target("avx512f"))))

/// Lane i of the result = the sum of the 8 lanes of a[i].
static inline __attribute__((always_inline, target("avx2,fma"))) __m256 row_sums8(const __m256 a[8]) {
    __m256 s1[4], s2[2];
    for (int i = 0; i < 4; i++)      // halves: row 2i, row 2i + 1 (4 partials each)
        s1[i] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20),
                              _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31));
    for (int i = 0; i < 2; i++)      // low half: rows 4i, 4i + 2; high: 4i + 1, 4i + 3 (2 partials)
        s2[i] = _mm256_add_ps(_mm256_shuffle_ps(s1[2 * i], s1[2 * i + 1], 0x44),
                              _mm256_shuffle_ps(s1[2 * i], s1[2 * i + 1], 0xEE));
    // Low half: rows 0, 2, 4, 6; high half: rows 1, 3, 5, 7.
    __m256 s3 = _mm256_add_ps(_mm256_shuffle_ps(s2[0], s2[1], 0x88), _mm256_shuffle_ps(s2[0], s2[1], 0xDD));
    return _mm256_permutevar8x32_ps(s3, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/// All-ones lanes for the first n of 8 (n ≤ 0: none, n ≥ 8: all).
static inline __attribute__((always_inline, target("avx2,fma"))) __m256i first8(long n) {
    const long c = n < 0 ? 0 : n > 8 ? 8 : n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/// scores16 in 8 lanes: acc[r] = q · k_r in 8 partial sums for r < n, 0 beyond.
static inline __attribute__((always_inline, target("avx2,fma")))
void scores8(__m256 acc[8], const long chunks, const float *q, const float *k, const long n, const __m256i tail) {
    const __m256i full = _mm256_set1_epi32(-1);
    const long D = 8 * chunks - 8 + (long)__builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(tail)));
    for (int r = 0; r < 8; r++) {
        acc[r] = _mm256_setzero_ps();
        if (r >= n) continue;
        for (long c = 0; c < chunks; c++) {
            const __m256i m = c == chunks - 1 ? tail : full;
            acc[r] = _mm256_fmadd_ps(_mm256_maskload_ps(q + 8 * c, m), _mm256_maskload_ps(k + r * D + 8 * c, m), acc[r]);
        }
    }
}

static __attribute__((target("avx2,fma")))
void step_avx2(long D, long G, long rows, float scale, const float *q, const float *k, const float *v,
               float *out, long head_stride, float *state, int first, float *scores, long score_stride,
               const float *next_k, const float *next_v, long next_rows) {
    const long chunks = (D + 7) / 8, row_bytes = D * 4;
    const __m256i full = _mm256_set1_epi32(-1), none = _mm256_setzero_si256(), tail = first8(D - 8 * (chunks - 1));
    for (long g = 0; g < G; g++) {
        const float *qg = q + g * D;
        float *s = scores + g * score_stride, *record = out + g * head_stride;
        for (long j0 = 0; j0 < rows; j0 += 8) {
            if (g == 0 && next_k && j0 < next_rows)
                prefetch_bytes(next_k, j0 * row_bytes, (j0 + 8 < next_rows ? j0 + 8 : next_rows) * row_bytes);
            const long n = rows - j0 < 8 ? rows - j0 : 8;
            __m256 acc[8];
            if (n == 8 && chunks == 8 && D == 64) scores8(acc, 8, qg, k + j0 * D, 8, full);
            else scores8(acc, chunks, qg, k + j0 * D, n, tail);
            _mm256_storeu_ps(s + j0, _mm256_mul_ps(row_sums8(acc), _mm256_set1_ps(scale)));
        }
        float block_max = -INFINITY, maximum, *st = state + 2 * g;
        for (long j = 0; j < rows; j++) block_max = s[j] > block_max ? s[j] : block_max;
        const float alpha = lean_rescale(st, first, block_max, &maximum);
        __m256 vsum = _mm256_setzero_ps();
        for (long j0 = 0; j0 < rows; j0 += 8) {
            __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j0), _mm256_set1_ps(maximum)));
            p = _mm256_and_ps(p, _mm256_castsi256_ps(first8(rows - j0)));
            _mm256_storeu_ps(s + j0, p);
            vsum = _mm256_add_ps(vsum, p);
        }
        float lanes[8], total = 0;
        _mm256_storeu_ps(lanes, vsum);
        for (int i = 0; i < 8; i++) total += lanes[i];
        st[1] = first ? total : st[1] * alpha + total;
        st[0] = maximum;
        for (long c0 = 0; c0 < chunks; c0 += 4) {
            __m256i m[4];
            for (int i = 0; i < 4; i++) m[i] = c0 + i < chunks - 1 ? full : c0 + i == chunks - 1 ? tail : none;
            __m256 even[4], odd[4];
            for (int i = 0; i < 4; i++) {
                odd[i] = _mm256_setzero_ps();
                even[i] = first ? odd[i] : _mm256_maskload_ps(record + 8 * (c0 + i), m[i]);
                if (alpha != 1) even[i] = _mm256_mul_ps(even[i], _mm256_set1_ps(alpha));
            }
            const float *column = v + 8 * c0;
            long j = 0;
            for (; j + 2 <= rows; j += 2) {
                if (g == 0 && c0 == 0 && next_v && (j & 7) == 0 && j < next_rows)
                    prefetch_bytes(next_v, j * row_bytes, (j + 8 < next_rows ? j + 8 : next_rows) * row_bytes);
                const __m256 p0 = _mm256_set1_ps(s[j]), p1 = _mm256_set1_ps(s[j + 1]);
                const float *v0 = column + j * D, *v1 = v0 + D;
                for (int i = 0; i < 4; i++) {
                    even[i] = _mm256_fmadd_ps(p0, _mm256_maskload_ps(v0 + 8 * i, m[i]), even[i]);
                    odd[i] = _mm256_fmadd_ps(p1, _mm256_maskload_ps(v1 + 8 * i, m[i]), odd[i]);
                }
            }
            if (j < rows) {
                const __m256 p0 = _mm256_set1_ps(s[j]);
                for (int i = 0; i < 4; i++)
                    even[i] = _mm256_fmadd_ps(p0, _mm256_maskload_ps(column + j * D + 8 * i, m[i]), even[i]);
            }
            for (int i = 0; i < 4; i++)
                _mm256_maskstore_ps(record + 8 * (c0 + i), m[i], _mm256_add_ps(even[i], odd[i]));
        }
    }
}

LEAN_LANES_DEFINE(tessera_lean_lanes_avx2, step_avx2, __attribute__((target("avx2,fma"))))
#endif
