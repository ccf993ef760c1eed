// The x86-64 micro-kernels, each compiled for its instruction set by a target attribute, so the
// target needs no global flags and runs on any x86-64 CPU (Swift picks a kernel from CPUID).
// Every element is one chain of fused multiply-adds over p from zero, so the AVX-512 and the
// AVX2 kernels give the same bits; the update is multiply, multiply, add (never contracted).
#pragma STDC FP_CONTRACT OFF
#include "CGemm.h"
#include "gemm_update.h"

#if defined(__x86_64__)
#include <immintrin.h>

/// The tile of C is fetched into L1 this many steps of p before the end (or at the start when kc
/// is shorter), so the update at the end does not wait on memory: C is the one operand that is
/// not packed, and a product with a large C finds its tiles in L3 or memory.
#define TESSERA_PREFETCH_C_DEPTH 32
#define TESSERA_PREFETCH_C(c, ldc, mr, nr) do { \
    for (long row = 0; row < (mr); row++) { \
        _mm_prefetch((const char *)((c) + row * (ldc)), _MM_HINT_T0); \
        _mm_prefetch((const char *)((c) + row * (ldc) + (nr) / 2), _MM_HINT_T0); \
        _mm_prefetch((const char *)((c) + row * (ldc) + (nr) - 1), _MM_HINT_T0); \
    } } while (0)

/// The AVX-512 tile with only the first `rows` rows of the sliver of A computed (a constant at
/// each call, so the loops unroll): an edge tile of 4 or 8 rows does not pay for 12. The chain
/// of each element is the same whatever `rows` is, so are its bits.
static inline __attribute__((always_inline, target("avx512f")))
void sgemm_avx512_rows(const int rows, long kc, const float *a, const float *b, float *c, long ldc,
                       long mr, long nr, float alpha, float beta) {
    enum { MR = TESSERA_GEMM_AVX512_MR, NR = TESSERA_GEMM_AVX512_NR };
    __m512 acc[MR][2];
    for (int i = 0; i < rows; i++) { acc[i][0] = _mm512_setzero_ps(); acc[i][1] = _mm512_setzero_ps(); }
    for (long p = 0, stop = kc > TESSERA_PREFETCH_C_DEPTH ? kc - TESSERA_PREFETCH_C_DEPTH : 0; p < kc; p++) {
        if (p == stop) TESSERA_PREFETCH_C(c, ldc, mr, nr);
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        for (int i = 0; i < rows; i++) {
            __m512 x = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(x, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(x, b1, acc[i][1]);
        }
        a += MR; b += NR;
    }
    if (mr == rows && nr == NR) {
        __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
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
    for (int i = 0; i < rows; i++) { _mm512_storeu_ps(tile + i * NR, acc[i][0]); _mm512_storeu_ps(tile + i * NR + 16, acc[i][1]); }
    tessera_gemm_update(tile, NR, c, ldc, mr, nr, alpha, beta);
}

__attribute__((target("avx512f")))
void tessera_sgemm_kernel_avx512(long kc, const float *a, const float *b, float *c, long ldc,
                                 long mr, long nr, float alpha, float beta) {
    if (mr <= 4) sgemm_avx512_rows(4, kc, a, b, c, ldc, mr, nr, alpha, beta);
    else if (mr <= 8) sgemm_avx512_rows(8, kc, a, b, c, ldc, mr, nr, alpha, beta);
    else sgemm_avx512_rows(TESSERA_GEMM_AVX512_MR, kc, a, b, c, ldc, mr, nr, alpha, beta);
}

__attribute__((target("avx2,fma")))
void tessera_sgemm_kernel_avx2(long kc, const float *a, const float *b, float *c, long ldc,
                               long mr, long nr, float alpha, float beta) {
    enum { MR = TESSERA_GEMM_AVX2_MR, NR = TESSERA_GEMM_AVX2_NR };
    __m256 acc[MR][2];
    for (int i = 0; i < MR; i++) { acc[i][0] = _mm256_setzero_ps(); acc[i][1] = _mm256_setzero_ps(); }
    for (long p = 0, stop = kc > TESSERA_PREFETCH_C_DEPTH ? kc - TESSERA_PREFETCH_C_DEPTH : 0; p < kc; p++) {
        if (p == stop) TESSERA_PREFETCH_C(c, ldc, mr, nr);
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

#endif
