// bf16 conversions and the bf16 matrix product's single-threaded core: the packing loops that
// put k in the pairs `vdpbf16ps` wants and the register-blocked micro-kernels (AVX512_BF16
// intrinsics, which Swift cannot emit, and their portable twin with the same bits). Threads,
// dispatch and checks live in Swift (Kernels/BF16Matmul.swift).
#pragma once
#include <stddef.h>
#include <stdint.h>

/// dst[i] = src[i] rounded to bf16: to nearest, ties to even; ±Inf and ±0 kept; denormals
/// rounded like any other value (not flushed); NaN stays NaN, made quiet, sign kept.
/// `wide` != 0 uses AVX-512 (same bits; only when the CPU has it).
void tessera_bf16_round(const float *src, uint16_t *dst, size_t count, int wide);

/// dst[i] = the Float32 with the bf16's bits on top (exact).
void tessera_bf16_widen(const uint16_t *src, float *dst, size_t count);

/// One `vdpbf16ps` lane in portable code: acc + x1·y1, then + x0·y0, each step fused and
/// rounded to nearest even, bf16 denormal inputs read as zero and denormal results flushed to
/// zero (the instruction's fixed behaviour; MXCSR is not consulted).
float tessera_bf16_dot_step(float acc, uint16_t x0, uint16_t x1, uint16_t y0, uint16_t y1);

/// C (m, n) = alpha · op(A) · op(B) + beta · C, row-major, op(A) (m, k), op(B) (k, n); an
/// operand is Float32 (rounded to bf16 while packing) when its `_bf16` flag is 0, else bf16
/// bits. Products accumulate in Float32 over k in blocks of 512 from k = 0 (the order does not
/// depend on m, n or where a caller cuts C); beta == 0 never reads C.
/// `hardware` 1 runs the AVX512_BF16 micro-kernel (only when the CPU has AVX-512 and
/// AVX512_BF16), 2 the portable one built for FMA (only when the CPU has FMA), 0 the plain
/// portable one; all give the same bits. Returns 0, or -1 when scratch could not be allocated.
int tessera_bf16_gemm(int hardware, int transpose_a, int transpose_b, long m, long n, long k, float alpha,
                      const void *a, int a_bf16, long lda, const void *b, int b_bf16, long ldb,
                      float beta, float *c, long ldc);

// ---- flash attention's operands, packed by the caller (Kernels/FlashPanels.swift) ------------

/// The micro-kernel's tile: MR rows of C from a left sliver, NR columns from a right one.
#define TESSERA_BF16_MR 12
#define TESSERA_BF16_NR 32
/// The largest depth a sliver packed here may have, and the most lines of a block packed with
/// `lines_contiguous`.
#define TESSERA_BF16_MAX_DEPTH 512
#define TESSERA_BF16_MAX_LINES 2048

/// Packs `lines` lines over depth k (≤ TESSERA_BF16_MAX_DEPTH) rounded to bf16, in slivers of
/// `width` lines, each [k pair][line][2] (the layout the GEMM packs), zero beyond `lines` and k.
/// Line l at depth p is src[l·ld + p], or src[p·ld + l] when `lines_contiguous` (then lines ≤
/// TESSERA_BF16_MAX_LINES).
void tessera_bf16_pack(int lines_contiguous, long lines, long k, const float *src, long ld, int width,
                       uint16_t *dst, int wide);

/// One line of a sliver of `width` lines from its k values x[0..<k] (k ≤ TESSERA_BF16_MAX_DEPTH),
/// rounded: pair q to sliver[q·2·width + 2·line ...]; an odd k's missing partner is zero. x NULL
/// writes zeros.
void tessera_bf16_put_line(const float *x, long k, uint16_t *sliver, int width, int line, int wide);

/// Depths `depth` (even) and `depth` + 1 of `lines` lines (≤ TESSERA_BF16_MAX_LINES) packed in
/// slivers of `width` lines `sliver` values apart, from x0[l] and x1[l], rounded; NULL writes zeros.
void tessera_bf16_put_depth_pair(const float *x0, const float *x1, long lines, uint16_t *panel, long sliver,
                                 int width, long depth, int wide);

/// The micro-kernel on packed slivers: C (mr ≤ MR, nr ≤ NR) = alpha · Σ over kp pairs + beta · C
/// (beta == 0 does not read C). `hardware` as for tessera_bf16_gemm; the same bits as the GEMM
/// over one k block.
void tessera_bf16_kernel(int hardware, long kp, const uint16_t *a, const uint16_t *b, float *c, long ldc,
                         int mr, int nr, float alpha, float beta);
