// Float32 GEMM micro-kernels (AVX-512, AVX2 + FMA, portable) and panel packing for Tessera's
// own GEMM (Sources/Kernels/Gemm.swift holds the loops and the dispatch). Only what Swift
// cannot express well lives here: the register-blocked inner loops with intrinsics, each
// compiled for its instruction set by a per-function target attribute (no global flags).
#pragma once
#include <stddef.h>

/// Tile sizes of each micro-kernel: MR rows by NR columns of C.
#define TESSERA_GEMM_AVX512_MR 12
#define TESSERA_GEMM_AVX512_NR 32
#define TESSERA_GEMM_AVX2_MR 6
#define TESSERA_GEMM_AVX2_NR 16
#define TESSERA_GEMM_PORTABLE_MR 4
#define TESSERA_GEMM_PORTABLE_NR 8

/// acc (MR × NR) = Σ_p a[p·MR + i] · b[p·NR + j] over p < kc, each element one chain of fused
/// multiply-adds in p order from zero (portable: multiply then add). Then for the top-left
/// mr × nr of the tile: C[i·ldc + j] = alpha · acc + beta · C (beta == 0: C = alpha · acc, C
/// is not read). The same element gives the same bits whatever tile or edge it falls in.
typedef void (*tessera_gemm_kernel)(long kc, const float *a, const float *b, float *c, long ldc,
                                    long mr, long nr, float alpha, float beta);

#if defined(__x86_64__)
/// Needs AVX-512F (the caller checks CPUID).
void tessera_sgemm_kernel_avx512(long kc, const float *a, const float *b, float *c, long ldc,
                                 long mr, long nr, float alpha, float beta);
/// Needs AVX2 and FMA.
void tessera_sgemm_kernel_avx2(long kc, const float *a, const float *b, float *c, long ldc,
                               long mr, long nr, float alpha, float beta);
#endif
void tessera_sgemm_kernel_portable(long kc, const float *a, const float *b, float *c, long ldc,
                                   long mr, long nr, float alpha, float beta);

/// Packs a kc × width panel into slivers of r lines (zeros past width): sliver s holds, for each
/// p < kc, the r values of lines s·r ..< s·r + r. Line i at depth p is src[p·ld + i], or
/// src[i·ld + p] when `strided`. op(A) packs with width m and strided = !transposed (lines are
/// rows of C), op(B) with width n and strided = transposed (lines are columns of C).
void tessera_gemm_pack(int strided, long width, long kc, const float *src, long ld, long r, float *out);
typedef void (*tessera_gemm_packer)(int strided, long width, long kc, const float *src, long ld, long r, float *out);
/// One KC block of a panel packed once for all the threads of a split product (the operand they
/// do not split): every caller claims chunks (runs of whole slivers, `chunks` per block) through
/// *next until none remain, packs each with `pack` into its place in `out`, counts it in *done,
/// then waits until all `chunks` are packed, by whichever callers claimed them. A caller only
/// waits on chunks another caller has claimed and is packing, never on a thread that has not
/// started: if the threads run one after the other, the first packs the whole block.
void tessera_gemm_pack_shared(tessera_gemm_packer pack, long *next, long *done, long chunks,
                              int strided, long width, long kc, const float *src, long ld, long r, float *out);
#if defined(__x86_64__)
/// tessera_gemm_pack's copy with AVX-512 moves and 16 × 16 transposes (needs AVX-512F).
void tessera_gemm_pack_avx512(int strided, long width, long kc, const float *src, long ld, long r, float *out);
#endif
