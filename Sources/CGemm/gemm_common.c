// Packing and the portable micro-kernel. No contraction of a·b + c into an FMA anywhere in
// this target: the tile update must give the same bits in the vector and the scalar paths.
#pragma STDC FP_CONTRACT OFF
#include "CGemm.h"
#include "gemm_update.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/// One sliver (count ≤ r lines) when the lines are rows of src (line i at depth p is
/// src[i·ld + p]): 4 lines × 4 depths at a time through a 4 × 4 transpose in SSE registers
/// (baseline x86-64), the rest element by element. A copy: the bits do not depend on the path.
static void pack_strided_sliver(long count, long kc, const float *src, long ld, long r, float *out) {
    long p = 0;
#if defined(__SSE2__)
    for (; p + 4 <= kc; p += 4) {
        float *dst = out + p * r;
        long i = 0;
        for (; i + 4 <= count; i += 4) {
            const float *line = src + i * ld + p;
            __m128 v0 = _mm_loadu_ps(line), v1 = _mm_loadu_ps(line + ld);
            __m128 v2 = _mm_loadu_ps(line + 2 * ld), v3 = _mm_loadu_ps(line + 3 * ld);
            _MM_TRANSPOSE4_PS(v0, v1, v2, v3);
            _mm_storeu_ps(dst + i, v0);
            _mm_storeu_ps(dst + r + i, v1);
            _mm_storeu_ps(dst + 2 * r + i, v2);
            _mm_storeu_ps(dst + 3 * r + i, v3);
        }
        for (; i < count; i++) {
            for (long q = 0; q < 4; q++) dst[q * r + i] = src[i * ld + p + q];
        }
        for (long q = 0; q < 4; q++) {
            for (long j = count; j < r; j++) dst[q * r + j] = 0;
        }
    }
#endif
    for (; p < kc; p++) {
        float *dst = out + p * r;
        long i = 0;
        for (; i < count; i++) dst[i] = src[i * ld + p];
        for (; i < r; i++) dst[i] = 0;
    }
}

/// One sliver when the lines are side by side in src (line i at depth p is src[p·ld + i]): a
/// row copy per depth, with the widths of the kernels as constants so each copy is a few
/// vector moves rather than a call to memcpy.
static void pack_contiguous_sliver(long count, long kc, const float *src, long ld, long r, float *out) {
#define TESSERA_PACK_FULL(R) \
    case R: for (long p = 0; p < kc; p++) { for (long i = 0; i < R; i++) out[p * R + i] = src[p * ld + i]; } return;
    if (count == r) {
        switch (r) {
            TESSERA_PACK_FULL(TESSERA_GEMM_AVX512_MR)
            TESSERA_PACK_FULL(TESSERA_GEMM_AVX512_NR)
            TESSERA_PACK_FULL(TESSERA_GEMM_AVX2_MR)
            TESSERA_PACK_FULL(TESSERA_GEMM_AVX2_NR)
            TESSERA_PACK_FULL(TESSERA_GEMM_PORTABLE_MR)
            TESSERA_PACK_FULL(TESSERA_GEMM_PORTABLE_NR)
            default: break;
        }
    }
#undef TESSERA_PACK_FULL
    for (long p = 0; p < kc; p++) {
        float *dst = out + p * r;
        const float *row = src + p * ld;
        long i = 0;
        for (; i < count; i++) dst[i] = row[i];
        for (; i < r; i++) dst[i] = 0;
    }
}

void tessera_gemm_pack(int strided, long width, long kc, const float *src, long ld, long r, float *out) {
    for (long i0 = 0; i0 < width; i0 += r) {
        long count = width - i0 < r ? width - i0 : r;
        if (strided) pack_strided_sliver(count, kc, src + i0 * ld, ld, r, out);
        else pack_contiguous_sliver(count, kc, src + i0, ld, r, out);
        out += r * kc;
    }
}

void tessera_gemm_pack_shared(tessera_gemm_packer pack, long *next, long *done, long chunks,
                              int strided, long width, long kc, const float *src, long ld, long r, float *out) {
    long slivers = (width + r - 1) / r, chunk;
    while ((chunk = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED)) < chunks) {
        long first = chunk * slivers / chunks * r, end = (chunk + 1) * slivers / chunks * r;
        if (end > width) end = width;
        if (end > first) pack(strided, end - first, kc, strided ? src + first * ld : src + first, ld, r, out + first * kc);
        __atomic_fetch_add(done, 1, __ATOMIC_RELEASE);
    }
    while (__atomic_load_n(done, __ATOMIC_ACQUIRE) < chunks) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
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
