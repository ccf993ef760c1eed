// The x86-64 micro-kernels, each compiled for its instruction set by a target attribute, so the
// target needs no global flags and runs on any x86-64 CPU (Swift picks a kernel from CPUID).
// Every element is one chain of fused multiply-adds over p from zero, so the AVX-512 and the
// AVX2 kernels give the same bits; the update is multiply, multiply, add (never contracted).
#pragma STDC FP_CONTRACT OFF
#include "CGemm.h"
#include "gemm_update.h"

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f")))
void tessera_sgemm_kernel_avx512(long kc, const float *a, const float *b, float *c, long ldc,
                                 long mr, long nr, float alpha, float beta) {
    enum { MR = TESSERA_GEMM_AVX512_MR, NR = TESSERA_GEMM_AVX512_NR };
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) { acc[i][0] = _mm512_setzero_ps(); acc[i][1] = _mm512_setzero_ps(); }
    for (long p = 0; p < kc; p++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        for (int i = 0; i < MR; i++) {
            __m512 x = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(x, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(x, b1, acc[i][1]);
        }
        a += MR; b += NR;
    }
    if (mr == MR && nr == NR) {
        __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
        for (int i = 0; i < MR; i++) {
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
    for (int i = 0; i < MR; i++) { _mm512_storeu_ps(tile + i * NR, acc[i][0]); _mm512_storeu_ps(tile + i * NR + 16, acc[i][1]); }
    tessera_gemm_update(tile, NR, c, ldc, mr, nr, alpha, beta);
}

__attribute__((target("avx2,fma")))
void tessera_sgemm_kernel_avx2(long kc, const float *a, const float *b, float *c, long ldc,
                               long mr, long nr, float alpha, float beta) {
    enum { MR = TESSERA_GEMM_AVX2_MR, NR = TESSERA_GEMM_AVX2_NR };
    __m256 acc[MR][2];
    for (int i = 0; i < MR; i++) { acc[i][0] = _mm256_setzero_ps(); acc[i][1] = _mm256_setzero_ps(); }
    for (long p = 0; p < kc; p++) {
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
