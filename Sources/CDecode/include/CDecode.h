// Decode attention's block kernel (LeanAttention, Sources/Kernels/LeanAttention.swift): one KV
// block of one kv head against the query heads of its group, in AVX-512, AVX2 + FMA and portable
// C, each compiled for its instruction set by a per-function target attribute (no global flags;
// Swift picks one from CPUID). Each kernel gives the same bits for the same block wherever it
// runs (any thread, any rank); the three kernels agree with each other within rounding only.
#pragma once

/// Rows of scores computed together: `scores` rows are padded to a multiple of this.
#define TESSERA_LEAN_ROW_TILE 16

/// For each query head g < group (q + g·head_dim): scores s_j = scale · q_g · k_j over the
/// `rows` (≥ 1) rows of k (head_dim floats each), p_j = exp(s_j − max s), and the record at
/// out + g·head_stride: o = Σ p_j v_j / Σ p_j (head_dim floats), then lse = max s + log Σ p_j.
/// `scores` is scratch of group · score_stride floats, score_stride ≥ rows rounded up to
/// TESSERA_LEAN_ROW_TILE. next_k and next_v (or NULL): the next block's rows (next_rows of
/// them), fetched towards the cache while this one is computed.
typedef void (*tessera_lean_block_kernel)(long head_dim, long group, long rows, float scale,
                                          const float *q, const float *k, const float *v,
                                          float *out, long head_stride, float *scores, long score_stride,
                                          const float *next_k, const float *next_v, long next_rows);

#if defined(__x86_64__)
/// Needs AVX-512F (the caller checks CPUID).
void tessera_lean_block_avx512(long head_dim, long group, long rows, float scale,
                               const float *q, const float *k, const float *v,
                               float *out, long head_stride, float *scores, long score_stride,
                               const float *next_k, const float *next_v, long next_rows);
/// Needs AVX2 and FMA.
void tessera_lean_block_avx2(long head_dim, long group, long rows, float scale,
                             const float *q, const float *k, const float *v,
                             float *out, long head_stride, float *scores, long score_stride,
                             const float *next_k, const float *next_v, long next_rows);
#endif
void tessera_lean_block_portable(long head_dim, long group, long rows, float scale,
                                 const float *q, const float *k, const float *v,
                                 float *out, long head_stride, float *scores, long score_stride,
                                 const float *next_k, const float *next_v, long next_rows);
