// The x86-64 micro-kernels, each compiled for its instruction set by a target attribute, so the
// target needs no global flags and runs on any x86-64 CPU (Swift picks a kernel from CPUID).
// Every element is one chain of fused multiply-adds over p from zero, so the AVX-512 and the
// AVX2 kernels give the same bits; the update is multiply, multiply, add (never contracted).
#pragma STDC FP_CONTRACT OFF
#include "CGemm.h"
#include "gemm_update.h"

#if defined(__x86_64__)
#include <immintrin.h>

/// The tile of C is fetched into L2 one row every 4 steps of p from the start, and into L1 this
/// many steps before the end (or at the start when kc is shorter), so the update at the end does
/// not wait on memory: C is the one operand that is not packed, and a product with a large C finds
/// its tiles in L3 or memory. Training's weight gradients (beta 1, C = dW cold in memory, k = 2048
/// in four KC blocks) waited there. All rows fetched into L2 at once at the start took their time
/// in bench-dense and bench-moe from 1.09-1.17x OpenBLAS Cooperlake's to 1.04-1.13x (issue 24u);
/// spread over the steps, as OpenBLAS's Skylake-X kernel spreads its own, `bench gemm --beta 1
/// --cold` on training's beta-1 products went from a geomean of 0.967 to 0.987 of OpenBLAS (3
/// rotating rounds, 1 thread), where the same products with a warm C read 0.988: a burst of
/// 24-36 misses to memory at once left the kernel waiting on its first loads.
#define TESSERA_PREFETCH_C_DEPTH 32
#define TESSERA_PREFETCH_C_L2_ROW(p, c, ldc, mr, nr) do { \
    if (((p) & 3) == 0 && ((p) >> 2) < (mr)) { \
        _mm_prefetch((const char *)((c) + ((p) >> 2) * (ldc)), _MM_HINT_T1); \
        _mm_prefetch((const char *)((c) + ((p) >> 2) * (ldc) + (nr) - 1), _MM_HINT_T1); \
    } } while (0)
#define TESSERA_PREFETCH_C_HINT(c, ldc, mr, nr, hint) do { \
    for (long row = 0; row < (mr); row++) { \
        _mm_prefetch((const char *)((c) + row * (ldc)), hint); \
        _mm_prefetch((const char *)((c) + row * (ldc) + (nr) / 2), hint); \
        _mm_prefetch((const char *)((c) + row * (ldc) + (nr) - 1), hint); \
    } } while (0)
#define TESSERA_PREFETCH_C(c, ldc, mr, nr) TESSERA_PREFETCH_C_HINT(c, ldc, mr, nr, _MM_HINT_T0)

/// The AVX-512 tile with only the first `rows` rows of the sliver of A computed and only the first
/// `halves` of its two 16-column halves (constants at each call, so the loops unroll): an edge
/// tile of 4 or 8 rows does not pay for 12, one of up to 16 columns (a router's 8 experts) not for
/// 32. The chain of each element is the same whatever `rows` and `halves` are, so are its bits.
static inline __attribute__((always_inline, target("avx512f")))
void sgemm_avx512_rows(const int rows, const int halves, long kc, const float *a, const float *b, float *c, long ldc,
                       long mr, long nr, float alpha, float beta) {
    enum { MR = TESSERA_GEMM_AVX512_MR, NR = TESSERA_GEMM_AVX512_NR };
    // Every loop over the rows is unrolled in full so the accumulators stay in registers: left to
    // itself clang turned the 12-row zeroing loop into a memset of a stack array (1.5 KiB on every
    // call) and kept the array in memory around the update.
    __m512 acc[MR][2];
    _Pragma("clang loop unroll(full)")
    for (int i = 0; i < rows; i++) { acc[i][0] = _mm512_setzero_ps(); acc[i][1] = _mm512_setzero_ps(); }
    for (long p = 0, stop = kc > TESSERA_PREFETCH_C_DEPTH ? kc - TESSERA_PREFETCH_C_DEPTH : 0; p < kc; p++) {
        if (p == stop) TESSERA_PREFETCH_C(c, ldc, mr, nr);
        TESSERA_PREFETCH_C_L2_ROW(p, c, ldc, mr, nr);
        __m512 b0 = _mm512_loadu_ps(b), b1 = halves == 2 ? _mm512_loadu_ps(b + 16) : b0;
        _Pragma("clang loop unroll(full)")
        for (int i = 0; i < rows; i++) {
            __m512 x = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(x, b0, acc[i][0]);
            if (halves == 2) acc[i][1] = _mm512_fmadd_ps(x, b1, acc[i][1]);
        }
        a += MR; b += NR;
    }
    if (mr == rows && nr == NR && halves == 2) {
        __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
        _Pragma("clang loop unroll(full)")
        for (int i = 0; i < rows; i++) {
            float *row = c + i * ldc;
            for (int h = 0; h < 2; h++) {
                __m512 t = _mm512_mul_ps(va, acc[i][h]);
                if (beta != 0) t = _mm512_add_ps(t, _mm512_mul_ps(vb, _mm512_loadu_ps(row + 16 * h)));
                _mm512_storeu_ps(row + 16 * h, t);
            }
        }
        return;
    }
    float tile[MR * NR];
    _Pragma("clang loop unroll(full)")
    for (int i = 0; i < rows; i++) {
        _mm512_storeu_ps(tile + i * NR, acc[i][0]);
        if (halves == 2) _mm512_storeu_ps(tile + i * NR + 16, acc[i][1]);
    }
    tessera_gemm_update(tile, NR, c, ldc, mr, nr, alpha, beta);
}

__attribute__((target("avx512f")))
void tessera_sgemm_kernel_avx512(long kc, const float *a, const float *b, float *c, long ldc,
                                 long mr, long nr, float alpha, float beta) {
    if (nr <= 16) {
        if (mr <= 4) sgemm_avx512_rows(4, 1, kc, a, b, c, ldc, mr, nr, alpha, beta);
        else if (mr <= 8) sgemm_avx512_rows(8, 1, kc, a, b, c, ldc, mr, nr, alpha, beta);
        else sgemm_avx512_rows(TESSERA_GEMM_AVX512_MR, 1, kc, a, b, c, ldc, mr, nr, alpha, beta);
    } else if (mr <= 4) sgemm_avx512_rows(4, 2, kc, a, b, c, ldc, mr, nr, alpha, beta);
    else if (mr <= 8) sgemm_avx512_rows(8, 2, kc, a, b, c, ldc, mr, nr, alpha, beta);
    else sgemm_avx512_rows(TESSERA_GEMM_AVX512_MR, 2, kc, a, b, c, ldc, mr, nr, alpha, beta);
}

__attribute__((target("avx2,fma")))
void tessera_sgemm_kernel_avx2(long kc, const float *a, const float *b, float *c, long ldc,
                               long mr, long nr, float alpha, float beta) {
    enum { MR = TESSERA_GEMM_AVX2_MR, NR = TESSERA_GEMM_AVX2_NR };
    __m256 acc[MR][2];
    for (int i = 0; i < MR; i++) { acc[i][0] = _mm256_setzero_ps(); acc[i][1] = _mm256_setzero_ps(); }
    for (long p = 0, stop = kc > TESSERA_PREFETCH_C_DEPTH ? kc - TESSERA_PREFETCH_C_DEPTH : 0; p < kc; p++) {
        if (p == stop) TESSERA_PREFETCH_C(c, ldc, mr, nr);
        TESSERA_PREFETCH_C_L2_ROW(p, c, ldc, mr, nr);
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        for (int i = 0; i < MR; i++) {
            __m256 x = _mm256_broadcast_ss(a + i);
            acc[i][0] = _mm256_fmadd_ps(x, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(x, b1, acc[i][1]);
        }
        a += MR; b += NR;
    }
    if (mr == MR && nr == NR) {
        __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
        for (int i = 0; i < MR; i++) {
            float *row = c + i * ldc;
            for (int h = 0; h < 2; h++) {
                __m256 t = _mm256_mul_ps(va, acc[i][h]);
                if (beta != 0) t = _mm256_add_ps(t, _mm256_mul_ps(vb, _mm256_loadu_ps(row + 8 * h)));
                _mm256_storeu_ps(row + 8 * h, t);
            }
        }
        return;
    }
    float tile[MR * NR];
    for (int i = 0; i < MR; i++) { _mm256_storeu_ps(tile + i * NR, acc[i][0]); _mm256_storeu_ps(tile + i * NR + 8, acc[i][1]); }
    tessera_gemm_update(tile, NR, c, ldc, mr, nr, alpha, beta);
}

/// A 16 × 16 transpose in registers: v[i] lane j ↔ v[j] lane i.
static inline __attribute__((always_inline, target("avx512f"))) void transpose16(__m512 v[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) { t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]); t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]); }
    for (int i = 0; i < 16; i += 4) {
        for (int h = 0; h < 2; h++) {
            __m512d x = _mm512_castps_pd(t[i + h]), y = _mm512_castps_pd(t[i + h + 2]);
            v[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            v[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        }
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(v[i], v[i + 4], 0x88); t[i + 4] = _mm512_shuffle_f32x4(v[i], v[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(v[i + 8], v[i + 12], 0x88); t[i + 12] = _mm512_shuffle_f32x4(v[i + 8], v[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88); v[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        v[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88); v[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

static inline __mmask16 lanes(long count) { return (__mmask16)((1u << (count < 0 ? 0 : count > 16 ? 16 : count)) - 1); }

/// Lines g0 ..< g0 + 16 of a sliver whose lines are rows of src (depth contiguous): 16 depths
/// of `count` rows (zeros for the rest) transposed in registers, `width` lanes stored per depth.
__attribute__((target("avx512f")))
static void pack_strided_group_avx512(long count, long width, long kc, const float *src, long ld, long r, float *out) {
    for (long p = 0; p < kc; p += 16) {
        __mmask16 depths = lanes(kc - p);
        __m512 v[16];
        for (int i = 0; i < 16; i++) v[i] = i < count ? _mm512_maskz_loadu_ps(depths, src + i * ld + p) : _mm512_setzero_ps();
        transpose16(v);
        for (int q = 0; q < 16 && p + q < kc; q++) _mm512_mask_storeu_ps(out + (p + q) * r, lanes(width), v[q]);
    }
}

/// Depths p0 ..< p0 + depth of one sliver whose lines are side by side in src: a row of up to
/// r values per depth in masked vector moves, zeros past `count`.
__attribute__((target("avx512f")))
static void pack_contiguous_rows_avx512(long count, long depth, const float *src, long ld, long r, float *out) {
    if (count == 32 && r == 32) {
        for (long p = 0; p < depth; p++) {
            _mm512_storeu_ps(out + p * 32, _mm512_loadu_ps(src + p * ld));
            _mm512_storeu_ps(out + p * 32 + 16, _mm512_loadu_ps(src + p * ld + 16));
        }
        return;
    }
    for (long p = 0; p < depth; p++) {
        for (long i = 0; i < r; i += 16) _mm512_mask_storeu_ps(out + p * r + i, lanes(r - i), _mm512_maskz_loadu_ps(lanes(count - i), src + p * ld + i));
    }
}

/// tessera_gemm_pack with AVX-512: strided lines through 16 × 16 transposes; side-by-side lines
/// 8 depths at a time across all slivers, so the source is read row by row (a sliver at a time
/// walked 512 rows of a wide matrix: a new page and cache set every row).
__attribute__((target("avx512f")))
void tessera_gemm_pack_avx512(int strided, long width, long kc, const float *src, long ld, long r, float *out) {
    enum { DEPTHS = 8 };
    long slivers = (width + r - 1) / r;
    if (strided) {
        for (long s = 0; s < slivers; s++) {
            long count = width - s * r < r ? width - s * r : r;
            for (long g = 0; g < r; g += 16)
                pack_strided_group_avx512(count - g, r - g < 16 ? r - g : 16, kc, src + (s * r + g) * ld, ld, r, out + s * r * kc + g);
        }
        return;
    }
    for (long p = 0; p < kc; p += DEPTHS) {
        long depth = kc - p < DEPTHS ? kc - p : DEPTHS;
        for (long s = 0; s < slivers; s++) {
            long count = width - s * r < r ? width - s * r : r;
            pack_contiguous_rows_avx512(count, depth, src + p * ld + s * r, ld, r, out + s * r * kc + p * r);
        }
    }
}

#endif
