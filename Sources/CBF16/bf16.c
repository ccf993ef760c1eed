// bf16 rounding and the bf16 GEMM core (see include/CBF16.h). Compiled without FP contraction:
// the portable micro-kernel must round exactly where the instruction does.
#pragma clang fp contract(off)
#include "CBF16.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/// Round to nearest even on the upper 16 bits; NaN made quiet (bit 22) so a payload in the low
/// bits cannot round it into an infinity.
static inline uint16_t round1(float f) {
    uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u | 0x00400000u) >> 16);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__x86_64__)
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/// round1 on 16 lanes of Float32 bits: the bf16 in each lane's upper 16 bits (lower bits junk).
AVX512 static inline __m512i round_lanes(__m512i u) {
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), infinity = _mm512_set1_epi32(0x7f800000);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, lsb));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, magnitude), infinity);
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
}

AVX512 static size_t round_avx512(const float *src, uint16_t *dst, size_t count) {
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512i r = round_lanes(_mm512_loadu_si512((const void *)(src + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
    if (i < count) {   // the tail under a mask: the same arithmetic
        __mmask16 mask = (__mmask16)((1u << (count - i)) - 1);
        __m512i r = round_lanes(_mm512_maskz_loadu_epi32(mask, (const void *)(src + i)));
        _mm256_mask_storeu_epi16((void *)(dst + i), mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
        i = count;
    }
    return i;
}

/// r[q] = column q of the 16 × 16 matrix of 32-bit values whose rows are r[0..15].
AVX512 static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    // r[4g + c] holds, in each 128-bit lane L, column 4L + c's values of rows 4g..4g+3.
    for (int g = 0; g < 2; g++)
        for (int c = 0; c < 4; c++) {
            t[8 * g + c] = _mm512_shuffle_i32x4(r[8 * g + c], r[8 * g + 4 + c], 0x88);
            t[8 * g + 4 + c] = _mm512_shuffle_i32x4(r[8 * g + c], r[8 * g + 4 + c], 0xdd);
        }
    for (int c = 0; c < 8; c++) {
        r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);
    }
}

/// Up to 16 lines (`count`) of a block whose k values are contiguous (`src`/`half` at line 0,
/// k 0; lines `ls` apart), over kc values: each line's pairs rounded (or copied, for bf16) and
/// stored as pair q of line l at d[q·row + 2l]. Pairs past kc are not stored, an odd kc's
/// partner is zero, lines past `count` are not touched. The same k values of the `ahead` lines
/// from `next` (the next call's) are prefetched meanwhile: without it the loads wait on memory.
AVX512 static void pack_lines16(const float *src, const uint16_t *half, long ls, long count, long kc,
                                uint16_t *d, long row, const char *next, long ahead) {
    long size = half ? 2 : 4;
    // The upper 16 bits of each 32-bit lane of two vectors (values 0..15 and 16..31): 32 bf16.
    const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                         31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __mmask16 lines = (__mmask16)((1u << count) - 1);
    for (long k0 = 0; k0 < kc; k0 += 32) {
        long left = kc - k0, pairs = left >= 32 ? 16 : (left + 1) / 2;
        __mmask16 m0 = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __mmask16 m1 = left >= 32 ? (__mmask16)0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
        __mmask32 mh = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1);
        for (long l = 0; l < ahead; l++) {
            const char *p = next + (l * ls + k0) * size;
            _mm_prefetch(p, _MM_HINT_T0);
            if (size == 4) _mm_prefetch(p + 64, _MM_HINT_T0);
        }
        __m512i r[16];
        for (int l = 0; l < 16; l++) {
            if (l >= count) { r[l] = _mm512_setzero_si512(); continue; }
            if (half) { r[l] = _mm512_maskz_loadu_epi16(mh, (const void *)(half + l * ls + k0)); continue; }
            __m512i lo = round_lanes(_mm512_maskz_loadu_epi32(m0, (const void *)(src + l * ls + k0)));
            __m512i hi = round_lanes(_mm512_maskz_loadu_epi32(m1, (const void *)(src + l * ls + k0 + 16)));
            r[l] = _mm512_permutex2var_epi16(lo, odd, hi);
        }
        transpose16(r);
        for (long q = 0; q < pairs; q++) _mm512_mask_storeu_epi32((void *)(d + (k0 / 2 + q) * row), lines, r[q]);
    }
}

/// d[2l] = line l of the first k row, d[2l + 1] = of the second, for l < count: Float32 rows
/// (f0, f1) rounded, or bf16 rows (h0, h1) copied; a NULL row reads as zeros. One pass, 16 lines
/// at a time (no rounded copy of the rows in between).
AVX512 static inline void pair_lines_avx512(const float *f0, const float *f1, const uint16_t *h0, const uint16_t *h1,
                                            uint16_t *d, long count) {
    const __m512i zero = _mm512_setzero_si512(), upper = _mm512_set1_epi32((int)0xffff0000u);
    for (long l = 0; l < count; l += 16) {
        __mmask16 mask = count - l >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (count - l)) - 1);
        __m512i x0 = zero, x1 = zero;
        if (f0) x0 = _mm512_srli_epi32(round_lanes(_mm512_maskz_loadu_epi32(mask, (const void *)(f0 + l))), 16);
        else if (h0) x0 = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const void *)(h0 + l)));
        if (f1) x1 = _mm512_and_si512(round_lanes(_mm512_maskz_loadu_epi32(mask, (const void *)(f1 + l))), upper);
        else if (h1) x1 = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const void *)(h1 + l))), 16);
        _mm512_mask_storeu_epi32((void *)(d + 2 * l), mask, _mm512_or_si512(x0, x1));
    }
}

/// pack_block's lines-contiguous case: each k pair of the block made in one pass from the two k
/// rows where they are, 16 lines at a time from the block's first line (whole vectors), then
/// dealt out to the panels (directly when the panel width is a multiple of 16).
AVX512 static void pair_block_avx512(const float *f, const uint16_t *h, long ks, long lines, long kc, int width, uint16_t *dst) {
    long kp = (kc + 1) / 2, panels = (lines + width - 1) / width;
    uint32_t t[TESSERA_BF16_MAX_LINES];
    long size = f ? 4 : 2;
    const char *base = f ? (const char *)f : (const char *)h;
    for (long q = 0; q < kp; q++) {
        long o0 = 2 * q * ks, o1 = 2 * q + 1 < kc ? o0 + ks : -1;
        // The rows two pairs ahead pulled in meanwhile (the rows' lines, a stride apart, are
        // two streams the hardware prefetcher follows late).
        for (long ahead = 2 * q + 4; ahead < 2 * q + 6 && ahead < kc; ahead++)
            for (long b = 0; b < lines * size; b += 64) _mm_prefetch(base + (ahead * ks) * size + b, _MM_HINT_T0);
        if (width % 16 == 0) {
            for (long l = 0; l < lines; l += 16) {
                uint16_t *d = dst + (l / width) * kp * 2 * width + q * 2 * width + 2 * (l % width);
                long count = lines - l < 16 ? lines - l : 16;
                if (f) pair_lines_avx512(f + o0 + l, o1 >= 0 ? f + o1 + l : NULL, NULL, NULL, d, count);
                else pair_lines_avx512(NULL, NULL, h + o0 + l, o1 >= 0 ? h + o1 + l : NULL, d, count);
            }
            continue;
        }
        if (f) pair_lines_avx512(f + o0, o1 >= 0 ? f + o1 : NULL, NULL, NULL, (uint16_t *)t, lines);
        else pair_lines_avx512(NULL, NULL, h + o0, o1 >= 0 ? h + o1 : NULL, (uint16_t *)t, lines);
        for (long panel = 0; panel < panels; panel++) {
            long first = panel * width, count = lines - first < width ? lines - first : width;
            uint16_t *d = dst + panel * kp * 2 * width + q * 2 * width;
            for (long l = 0; l < count; l += 16) {
                __mmask16 mask = count - l >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (count - l)) - 1);
                _mm512_mask_storeu_epi32((void *)(d + 2 * l), mask, _mm512_maskz_loadu_epi32(mask, (const void *)(t + first + l)));
            }
        }
    }
}

#endif

void tessera_bf16_round(const float *src, uint16_t *dst, size_t count, int wide) {
    size_t i = 0;
#if defined(__x86_64__)
    if (wide) i = round_avx512(src, dst, count);
#else
    (void)wide;
#endif
    for (; i < count; i++) dst[i] = round1(src[i]);
}

void tessera_bf16_widen(const uint16_t *src, float *dst, size_t count) {
    for (size_t i = 0; i < count; i++) dst[i] = float_of((uint32_t)src[i] << 16);
}

/// Denormals in, as the instruction reads them: zero with the sign kept.
static inline float daz(uint32_t u) { return float_of((u & 0x7f800000u) == 0 ? (u & 0x80000000u) : u); }

static inline float dot_step(float acc, uint16_t x0, uint16_t x1, uint16_t y0, uint16_t y1) {
    acc = daz(bits_of(fmaf(daz((uint32_t)x1 << 16), daz((uint32_t)y1 << 16), daz(bits_of(acc)))));
    return daz(bits_of(fmaf(daz((uint32_t)x0 << 16), daz((uint32_t)y0 << 16), acc)));
}

float tessera_bf16_dot_step(float acc, uint16_t x0, uint16_t x1, uint16_t y0, uint16_t y1) {
    return dot_step(acc, x0, x1, y0, y1);
}

// ---- blocking -------------------------------------------------------------------------------

enum { MR = TESSERA_BF16_MR, NR = TESSERA_BF16_NR, KC = TESSERA_BF16_MAX_DEPTH, MC = 144, NC = TESSERA_BF16_MAX_LINES };

/// A matrix operand: element (i, j) at i·rs + j·cs, Float32 or bf16 bits.
typedef struct { const float *f; const uint16_t *h; long rs, cs; } view_t;

/// `count` contiguous values from `offset` as bf16 bits (rounded, or copied when already bf16).
static inline void run(const view_t *v, long offset, long count, uint16_t *out, int wide) {
    if (v->h) memcpy(out, v->h + offset, (size_t)count * sizeof(uint16_t));
    else tessera_bf16_round(v->f + offset, out, (size_t)count, wide);
}

/// d[2l] = u0[l], d[2l + 1] = u1[l] for l < count: two k rows' values of each line made a pair
/// (the portable paths; AVX-512 pairs rows in one pass, pair_lines_avx512).
static void interleave(const uint16_t *u0, const uint16_t *u1, uint16_t *d, long count) {
    for (long l = 0; l < count; l++) { d[2 * l] = u0[l]; d[2 * l + 1] = u1[l]; }
}

/// Lines in the group of pack_lines16 calls that starts at line `first`: up to 16, inside its
/// panel of `width`, before `lines` (≤ 0: none).
static inline long group_lines(long first, long lines, int width) {
    long n = lines - first, room = width - first % width;
    if (n > room) n = room;
    return n > 16 ? 16 : n;
}

/// A block of `lines` lines — rows of A or columns of B — from line l0, over k p0..<p0+kc, as
/// panels of `width` lines, each [k pair][line][2], zero beyond `lines` and kc. A line's values
/// are `ls` apart, its k values `ks` apart; one of the two is 1 (row-major operands).
static void pack_block(const view_t *v, long ls, long ks, long l0, long p0, long lines, long kc, int width,
                       uint16_t *dst, int wide) {
    long kp = (kc + 1) / 2, panels = (lines + width - 1) / width;
    if (lines % width)   // the last panel's missing lines (every path writes an odd k's zero itself)
        memset(dst + (panels - 1) * kp * 2 * width, 0, (size_t)kp * 2 * width * sizeof(uint16_t));
#if defined(__x86_64__)
    if (ks == 1 && wide) {   // each line's k values contiguous: 16 lines at a time, transposed in registers
        const char *base = v->h ? (const char *)v->h : (const char *)v->f;
        long size = v->h ? 2 : 4, first = 0, count = group_lines(0, lines, width);
        while (count > 0) {   // groups of up to 16 lines inside a panel, one after another
            long after = first + count, ahead = group_lines(after, lines, width), offset = (l0 + first) * ls + p0;
            pack_lines16(v->h ? NULL : v->f + offset, v->h ? v->h + offset : NULL, ls, count, kc,
                         dst + first / width * kp * 2 * width + 2 * (first % width), 2 * width,
                         ahead > 0 ? base + ((l0 + after) * ls + p0) * size : NULL, ahead > 0 ? ahead : 0);
            first = after;
            count = ahead;
        }
        return;
    }
#endif
    if (ks == 1) {   // each line's k values contiguous: round a line, deal its pairs out
        uint16_t t[KC];
        for (long l = 0; l < lines; l++) {
            run(v, (l0 + l) * ls + p0, kc, t, wide);
            uint16_t *d = dst + (l / width) * kp * 2 * width + 2 * (l % width);
            for (long q = 0; q < kc / 2; q++) memcpy(d + q * 2 * width, t + 2 * q, 4);
            if (kc & 1) { d[(kp - 1) * 2 * width] = t[kc - 1]; d[(kp - 1) * 2 * width + 1] = 0; }
        }
    } else {         // lines contiguous: round two k rows of the whole block (bf16 rows read in place), interleave them
#if defined(__x86_64__)
        if (wide) {
            long o = p0 * ks + l0;
            pair_block_avx512(v->h ? NULL : v->f + o, v->h ? v->h + o : NULL, ks, lines, kc, width, dst);
            return;
        }
#endif
        uint16_t t0[NC], t1[NC];
        for (long q = 0; q < kp; q++) {
            const uint16_t *k0 = t0, *k1 = t1;
            long o0 = (p0 + 2 * q) * ks + l0, o1 = o0 + ks;
            if (v->h) k0 = v->h + o0; else run(v, o0, lines, t0, wide);
            if (2 * q + 1 >= kc) memset(t1, 0, (size_t)lines * sizeof(uint16_t));
            else if (v->h) k1 = v->h + o1;
            else run(v, o1, lines, t1, wide);
            for (long panel = 0; panel < panels; panel++) {
                uint16_t *d = dst + panel * kp * 2 * width + q * 2 * width;
                const uint16_t *u0 = k0 + panel * width, *u1 = k1 + panel * width;
                long count = lines - panel * width < width ? lines - panel * width : width;
                interleave(u0, u1, d, count);
            }
        }
    }
}

/// A block (rows i0..<i0+mc, k p0..<p0+kc) as panels of MR rows.
static void pack_a(const view_t *a, long i0, long p0, long mc, long kc, uint16_t *dst, int wide) {
    pack_block(a, a->rs, a->cs, i0, p0, mc, kc, MR, dst, wide);
}

/// B block (k p0..<p0+kc, columns j0..<j0+nc) as panels of NR columns.
static void pack_b(const view_t *b, long p0, long j0, long kc, long nc, uint16_t *dst, int wide) {
    pack_block(b, b->cs, b->rs, j0, p0, nc, kc, NR, dst, wide);
}

/// C (mr, nr) = alpha · acc + beta · C on the first k block (beta == 0: C not read), else
/// C + alpha · acc.
static inline float finish(float acc, float alpha, float beta, int first, const float *c) {
    float v = alpha * acc;
    if (!first) return *c + v;
    return beta == 0 ? v : v + beta * *c;
}

/// The emulation; compiled twice: plain (fmaf from the C library) and, for CPUs with FMA, with
/// fmaf as one instruction (the same correctly rounded result, much faster).
#define PORTABLE_KERNEL(NAME, ATTRIBUTES)                                                              \
ATTRIBUTES static void NAME(long kp, const uint16_t *a, const uint16_t *b, float *c, long ldc,          \
                            int mr, int nr, float alpha, float beta, int first) {                       \
    float acc[MR][NR];                                                                                  \
    for (int r = 0; r < mr; r++)                                                                        \
        for (int j = 0; j < nr; j++) acc[r][j] = 0;                                                     \
    for (long q = 0; q < kp; q++) {                                                                     \
        const uint16_t *aq = a + q * 2 * MR, *bq = b + q * 2 * NR;                                      \
        for (int r = 0; r < mr; r++)                                                                    \
            for (int j = 0; j < nr; j++)                                                                \
                acc[r][j] = dot_step(acc[r][j], aq[2 * r], aq[2 * r + 1], bq[2 * j], bq[2 * j + 1]);    \
    }                                                                                                   \
    for (int r = 0; r < mr; r++)                                                                        \
        for (int j = 0; j < nr; j++) c[r * ldc + j] = finish(acc[r][j], alpha, beta, first, c + r * ldc + j); \
}
PORTABLE_KERNEL(kernel_portable, )
#if defined(__x86_64__)
PORTABLE_KERNEL(kernel_portable_fma, __attribute__((target("fma"))))
#endif


#if defined(__x86_64__)
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

BF16_TARGET static inline void store_row(float *c, __m512 acc, __mmask16 mask, __m512 alpha, float beta, int first) {
    if (!mask) return;
    __m512 v = _mm512_mul_ps(alpha, acc);
    if (!first) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c), v);
    else if (beta != 0) v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(mask, c)));
    _mm512_mask_storeu_ps(c, mask, v);
}

BF16_TARGET static void kernel_avx512(long kp, const uint16_t *a, const uint16_t *b, float *c, long ldc,
                                      int mr, int nr, float alpha, float beta, int first) {
    __m512 acc[MR][2];
#pragma clang loop unroll(full)
    for (int r = 0; r < MR; r++) { acc[r][0] = _mm512_setzero_ps(); acc[r][1] = _mm512_setzero_ps(); }
    for (long q = 0; q < kp; q++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(b + q * 2 * NR));
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(b + q * 2 * NR + 32));
        const uint16_t *aq = a + q * 2 * MR;
#pragma clang loop unroll(full)
        for (int r = 0; r < MR; r++) {
            int32_t pair;
            memcpy(&pair, aq + 2 * r, 4);
            __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    __m512 va = _mm512_set1_ps(alpha);
    // Unrolled over MR with constant indices, so acc stays in registers (a loop to the run-time
    // mr made clang keep acc on the stack and clear it with a memset on every call).
#pragma clang loop unroll(full)
    for (int r = 0; r < MR; r++) {
        if (r < mr) {
            store_row(c + r * ldc, acc[r][0], m0, va, beta, first);
            store_row(c + r * ldc + 16, acc[r][1], m1, va, beta, first);
        }
    }
}
#endif

/// The source of a pack still to come, as `rows` runs of `bytes` contiguous bytes `stride` apart.
typedef struct { const char *base; long rows, bytes, stride; } region_t;

static region_t pack_region(const view_t *v, long ls, long ks, long l0, long p0, long lines, long kc) {
    long size = v->h ? 2 : 4;
    const char *base = v->h ? (const char *)v->h : (const char *)v->f;
    if (ks == 1) return (region_t){ base + (l0 * ls + p0) * size, lines, kc * size, ls * size };
    return (region_t){ base + (p0 * ks + l0) * size, kc, lines * size, ks * size };
}

/// Pulls the next packs' sources towards the core while the micro-kernel, which is bound by its
/// multiply-adds, runs: each call fetches the next `lines` cache lines of up to two regions. The
/// packs themselves would otherwise wait on memory (activations are larger than L2).
typedef struct { region_t r[2]; int count, cur; long row, line; } prefetch_t;

static void prefetch_lines(prefetch_t *p, long lines) {
    while (lines > 0 && p->cur < p->count) {
        const region_t *r = &p->r[p->cur];
        if (p->row >= r->rows) { p->cur++; p->row = 0; p->line = 0; continue; }
        uintptr_t start = (uintptr_t)(r->base + p->row * r->stride), first = start & ~(uintptr_t)63;
        long count = (long)((start + (uintptr_t)r->bytes - first + 63) / 64);
        for (; p->line < count && lines > 0; p->line++, lines--) __builtin_prefetch((const void *)(first + 64 * (uintptr_t)p->line), 0, 0);
        if (p->line >= count) { p->row++; p->line = 0; }
    }
}

static long region_lines(const region_t *r) { return r->rows * ((r->bytes + 63) / 64 + 1); }

int tessera_bf16_gemm(int hardware, int transpose_a, int transpose_b, long m, long n, long k, float alpha,
                      const void *a, int a_bf16, long lda, const void *b, int b_bf16, long ldb,
                      float beta, float *c, long ldc) {
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) {
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
        return 0;
    }
    view_t va = { a_bf16 ? NULL : a, a_bf16 ? a : NULL, transpose_a ? 1 : lda, transpose_a ? lda : 1 };
    view_t vb = { b_bf16 ? NULL : b, b_bf16 ? b : NULL, transpose_b ? 1 : ldb, transpose_b ? ldb : 1 };
    uint16_t *pa = aligned_alloc(64, (size_t)MC * KC * sizeof(uint16_t));
    uint16_t *pb = aligned_alloc(64, (size_t)NC * KC * sizeof(uint16_t));
    if (!pa || !pb) { free(pa); free(pb); return -1; }
    void (*kernel)(long, const uint16_t *, const uint16_t *, float *, long, int, int, float, float, int) = kernel_portable;
#if defined(__x86_64__)
    if (hardware == 1) kernel = kernel_avx512;
    if (hardware == 2) kernel = kernel_portable_fma;
#else
    (void)hardware;
#endif
    for (long jc = 0; jc < n; jc += NC) {
        long nc = n - jc < NC ? n - jc : NC;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC, kp = (kc + 1) / 2;
            pack_b(&vb, pc, jc, kc, nc, pb, hardware == 1);
            for (long ic = 0; ic < m; ic += MC) {
                long mc = m - ic < MC ? m - ic : MC;
                pack_a(&va, ic, pc, mc, kc, pa, hardware == 1);
                // What is packed next: A's next block, else the next B block and its first A block.
                prefetch_t next = { .count = 0 };
                if (ic + MC < m) {
                    next.r[next.count++] = pack_region(&va, va.rs, va.cs, ic + MC, pc, m - ic - MC < MC ? m - ic - MC : MC, kc);
                } else {
                    long p1 = pc + KC < k ? pc + KC : 0, j1 = pc + KC < k ? jc : jc + NC;
                    if (j1 < n) {
                        long kc1 = k - p1 < KC ? k - p1 : KC, nc1 = n - j1 < NC ? n - j1 : NC;
                        next.r[next.count++] = pack_region(&vb, vb.cs, vb.rs, j1, p1, nc1, kc1);
                        next.r[next.count++] = pack_region(&va, va.rs, va.cs, 0, p1, m < MC ? m : MC, kc1);
                    }
                }
                long calls = ((nc + NR - 1) / NR) * ((mc + MR - 1) / MR), total = 0;
                for (int r = 0; r < next.count; r++) total += region_lines(&next.r[r]);
                long per_call = (total + calls - 1) / calls;
                for (long jr = 0; jr < nc; jr += NR)
                    for (long ir = 0; ir < mc; ir += MR) {
                        prefetch_lines(&next, per_call);
                        kernel(kp, pa + (ir / MR) * kp * 2 * MR, pb + (jr / NR) * kp * 2 * NR,
                               c + (ic + ir) * ldc + jc + jr, ldc,
                               (int)(mc - ir < MR ? mc - ir : MR), (int)(nc - jr < NR ? nc - jr : NR),
                               alpha, beta, pc == 0);
                    }
            }
        }
    }
    free(pa);
    free(pb);
    return 0;
}

// ---- flash attention's operands -------------------------------------------------------------

void tessera_bf16_pack(int lines_contiguous, long lines, long k, const float *src, long ld, int width,
                       uint16_t *dst, int wide) {
    view_t v = { src, NULL, lines_contiguous ? 1 : ld, lines_contiguous ? ld : 1 };
    pack_block(&v, v.rs, v.cs, 0, 0, lines, k, width, dst, wide);
}

void tessera_bf16_put_line(const float *x, long k, uint16_t *sliver, int width, int line, int wide) {
    uint16_t t[KC + 1];
    if (x) tessera_bf16_round(x, t, (size_t)k, wide);
    else memset(t, 0, (size_t)k * sizeof(uint16_t));
    t[k] = 0;
    uint16_t *d = sliver + 2 * line;
    for (long q = 0; q < (k + 1) / 2; q++) memcpy(d + q * 2 * width, t + 2 * q, 4);
}

void tessera_bf16_put_depth_pair(const float *x0, const float *x1, long lines, uint16_t *panel, long sliver,
                                 int width, long depth, int wide) {
#if defined(__x86_64__)
    if (wide) {
        for (long l0 = 0; l0 < lines; l0 += width)
            pair_lines_avx512(x0 ? x0 + l0 : NULL, x1 ? x1 + l0 : NULL, NULL, NULL, panel + (l0 / width) * sliver + depth * width,
                              lines - l0 < width ? lines - l0 : width);
        return;
    }
#endif
    uint16_t t0[NC], t1[NC];
    if (x0) tessera_bf16_round(x0, t0, (size_t)lines, wide); else memset(t0, 0, (size_t)lines * sizeof(uint16_t));
    if (x1) tessera_bf16_round(x1, t1, (size_t)lines, wide); else memset(t1, 0, (size_t)lines * sizeof(uint16_t));
    for (long l0 = 0; l0 < lines; l0 += width) {
        uint16_t *d = panel + (l0 / width) * sliver + depth * width;
        interleave(t0 + l0, t1 + l0, d, lines - l0 < width ? lines - l0 : width);
    }
}

void tessera_bf16_kernel(int hardware, long kp, const uint16_t *a, const uint16_t *b, float *c, long ldc,
                         int mr, int nr, float alpha, float beta) {
#if defined(__x86_64__)
    if (hardware == 1) { kernel_avx512(kp, a, b, c, ldc, mr, nr, alpha, beta, 1); return; }
    if (hardware == 2) { kernel_portable_fma(kp, a, b, c, ldc, mr, nr, alpha, beta, 1); return; }
#endif
    kernel_portable(kp, a, b, c, ldc, mr, nr, alpha, beta, 1);
}
