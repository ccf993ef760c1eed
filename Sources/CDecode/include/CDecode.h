// Decode attention's kernels (LeanAttention, Sources/Kernels/LeanAttention.swift): the lanes of
// one kv head's cache against the query heads of its group, in AVX-512, AVX2 + FMA and portable
// C, each compiled for its instruction set by a per-function target attribute (no global flags;
// Swift picks one from CPUID). Each kernel gives the same bits for the same lane wherever and
// with whatever neighbours it runs (any thread, any rank); the three agree within rounding only.
#pragma once

/// Rows of scores computed together: `scratch` score rows are padded to a multiple of this.
#define TESSERA_LEAN_ROW_TILE 16

/// The lanes [lane_from, lane_to) of one kv head's cache of `length` rows (head_dim floats each,
/// consecutive in k and in v) cut into blocks of `block_rows` rows (the last may be shorter):
/// block j belongs to lane j mod `lanes`, at round j / lanes. For each query head g < group
/// (q + g·head_dim) and each such lane, the lane's blocks fold in round order, online: a block's
/// scores s_j = scale · q_g · k_j, its maximum m_b; the lane's running maximum m becomes
/// max(m, m_b), the running sum and unnormalised output are rescaled by exp(m_old − m), and
/// p_j = exp(s_j − m) adds Σ p_j and Σ p_j v_j. The order of the steps depends only on the lane
/// and its rounds, never on lane_from, lane_to or the caller's split. Then the record at
/// out + g·head_stride + lane·(head_dim + 1) gets o = Σ p_j v_j / Σ p_j (head_dim floats) and
/// lse = m + log Σ p_j; a lane without blocks gets o = 0, lse = −∞.
/// Rounds go outermost and lanes inner, so the rows are read in address order. `scratch` holds
/// group · (score_stride + 2 · (lane_to − lane_from)) floats, score_stride ≥ block_rows rounded
/// up to TESSERA_LEAN_ROW_TILE. after_k and after_v (or NULL): the first block the caller runs
/// next (after_rows rows), fetched towards the cache during the last block here.
typedef void (*tessera_lean_lanes_kernel)(long head_dim, long group, float scale, const float *q,
                                          const float *k, const float *v, long length, long block_rows,
                                          long lanes, long lane_from, long lane_to,
                                          float *out, long head_stride, float *scratch, long score_stride,
                                          const float *after_k, const float *after_v, long after_rows);

#define TESSERA_LEAN_LANES_DECLARE(NAME) \
    void NAME(long head_dim, long group, float scale, const float *q, const float *k, const float *v, long length, \
              long block_rows, long lanes, long lane_from, long lane_to, float *out, long head_stride, float *scratch, \
              long score_stride, const float *after_k, const float *after_v, long after_rows);

#if defined(__x86_64__)
/// Needs AVX-512F (the caller checks CPUID). Head dim 64 and blocks of 64 rows take an unrolled
/// path with the same operations in the same order as every other shape's.
TESSERA_LEAN_LANES_DECLARE(tessera_lean_lanes_avx512)
/// tessera_lean_lanes_avx512 without its D = 64 path (tests: the two give the same bits).
TESSERA_LEAN_LANES_DECLARE(tessera_lean_lanes_avx512_any)
/// Needs AVX2 and FMA.
TESSERA_LEAN_LANES_DECLARE(tessera_lean_lanes_avx2)
#endif
TESSERA_LEAN_LANES_DECLARE(tessera_lean_lanes_portable)
