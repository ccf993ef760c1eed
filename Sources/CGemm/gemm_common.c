// Packing and the portable micro-kernel. No contraction of a·b + c into an FMA anywhere in
// this target: the tile update must give the same bits in the vector and the scalar paths.
#pragma STDC FP_CONTRACT OFF
#include "CGemm.h"
#include "gemm_update.h"
#include <string.h>

void tessera_gemm_pack_a(int transposed, long m, long kc, const float *a, long lda, long mr, float *out) {
    for (long i0 = 0; i0 < m; i0 += mr) {
        long rows = m - i0 < mr ? m - i0 : mr;
        if (transposed) {
            // op(A)(i, p) = a[p·lda + i]: each p is a contiguous run of rows.
            for (long p = 0; p < kc; p++) {
                const float *src = a + p * lda + i0;
                float *dst = out + p * mr;
                long i = 0;
                for (; i < rows; i++) dst[i] = src[i];
                for (; i < mr; i++) dst[i] = 0;
            }
        } else {
            // Rows are strided: read the mr rows side by side, write each p's mr values in turn.
            for (long p = 0; p < kc; p++) {
                const float *src = a + i0 * lda + p;
                float *dst = out + p * mr;
                long i = 0;
                for (; i < rows; i++) dst[i] = src[i * lda];
                for (; i < mr; i++) dst[i] = 0;
            }
        }
        out += mr * kc;
    }
}

void tessera_gemm_pack_b(int transposed, long kc, long n, const float *b, long ldb, long nr, float *out) {
    for (long j0 = 0; j0 < n; j0 += nr) {
        long cols = n - j0 < nr ? n - j0 : nr;
        if (transposed) {
            for (long p = 0; p < kc; p++) {
                const float *src = b + j0 * ldb + p;
                float *dst = out + p * nr;
                long j = 0;
                for (; j < cols; j++) dst[j] = src[j * ldb];
                for (; j < nr; j++) dst[j] = 0;
            }
        } else {
            for (long p = 0; p < kc; p++) {
                const float *src = b + p * ldb + j0;
                float *dst = out + p * nr;
                if (cols == nr) { memcpy(dst, src, (size_t)nr * sizeof(float)); continue; }
                long j = 0;
                for (; j < cols; j++) dst[j] = src[j];
                for (; j < nr; j++) dst[j] = 0;
            }
        }
        out += nr * kc;
    }
}

void tessera_gemm_update(const float *tile, long ldt, float *c, long ldc, long mr, long nr, float alpha, float beta) {
    for (long i = 0; i < mr; i++) {
        for (long j = 0; j < nr; j++) {
            float t = alpha * tile[i * ldt + j];
            c[i * ldc + j] = beta == 0 ? t : t + beta * c[i * ldc + j];
        }
    }
}

void tessera_sgemm_kernel_portable(long kc, const float *a, const float *b, float *c, long ldc,
                                   long mr, long nr, float alpha, float beta) {
    enum { MR = TESSERA_GEMM_PORTABLE_MR, NR = TESSERA_GEMM_PORTABLE_NR };
    float acc[MR * NR] = {0};
    for (long p = 0; p < kc; p++) {
        for (int i = 0; i < MR; i++) {
            float x = a[p * MR + i];
            for (int j = 0; j < NR; j++) acc[i * NR + j] = acc[i * NR + j] + x * b[p * NR + j];
        }
    }
    tessera_gemm_update(acc, NR, c, ldc, mr, nr, alpha, beta);
}
