// Packing and the portable micro-kernel. No contraction of a·b + c into an FMA anywhere in
// this target: the tile update must give the same bits in the vector and the scalar paths.
#pragma STDC FP_CONTRACT OFF
#include "CGemm.h"
#include "gemm_update.h"
#include <string.h>

void tessera_gemm_pack(int strided, long width, long kc, const float *src, long ld, long r, float *out) {
    for (long i0 = 0; i0 < width; i0 += r) {
        long count = width - i0 < r ? width - i0 : r;
        for (long p = 0; p < kc; p++) {
            float *dst = out + p * r;
            long i = 0;
            if (strided) {
                // Lines of the sliver are rows of src: read them side by side.
                const float *column = src + i0 * ld + p;
                for (; i < count; i++) dst[i] = column[i * ld];
            } else {
                const float *row = src + p * ld + i0;
                if (count == r) { memcpy(dst, row, (size_t)r * sizeof(float)); continue; }
                for (; i < count; i++) dst[i] = row[i];
            }
            for (; i < r; i++) dst[i] = 0;
        }
        out += r * kc;
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
