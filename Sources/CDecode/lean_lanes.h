// The lane walk shared by the kernels of every instruction set (CDecode.h): which block comes
// next, the running state, the final records. Only the block step differs between them.
#pragma once
#include "CDecode.h"
#include <math.h>
#include <stddef.h>

/// Folds one block of `rows` rows into the running state of one lane, for the G query heads:
/// record = out + g·head_stride holds the unnormalised output, state[2g] the running maximum
/// and state[2g + 1] the running sum (both unset when `first`). next_k, next_v: the block after
/// this one (next_rows rows, or NULL), to fetch towards the cache meanwhile.
typedef void (*lean_step)(long D, long G, long rows, float scale, const float *q, const float *k, const float *v,
                          float *out, long head_stride, float *state, int first, float *scores, long score_stride,
                          const float *next_k, const float *next_v, long next_rows);

/// The rescaling of the running state by a block of maximum `block_max` and (already rescaled)
/// sum: returns the factor for the old output (0 on the first block: nothing to keep) and
/// updates state; `maximum` receives the new running maximum the block's p_j use.
static inline float lean_rescale(float *state, int first, float block_max, float *maximum) {
    if (first) { *maximum = block_max; return 0; }
    const float m = state[0] > block_max ? state[0] : block_max;
    *maximum = m;
    return m == state[0] ? 1.0f : expf(state[0] - m);
}

static inline __attribute__((always_inline))
void lean_lanes(lean_step step, long D, long G, float scale, const float *q, const float *k, const float *v,
                long length, long block_rows, long lanes, long from, long to, float *out, long head_stride,
                float *scratch, long score_stride, const float *after_k, const float *after_v, long after_rows) {
    const long blocks = (length + block_rows - 1) / block_rows, size = D + 1;
    float *scores = scratch, *state = scratch + G * score_stride;   // state: 2 floats per (lane, head)
    long round = 0, lane = from, j = from;
    while (j < blocks) {
        long next_lane = lane + 1, next_round = round;
        if (next_lane >= to || next_round * lanes + next_lane >= blocks) { next_lane = from; next_round = round + 1; }
        const long next = next_round * lanes + next_lane;
        const long rows = length - j * block_rows < block_rows ? length - j * block_rows : block_rows;
        const float *nk = after_k, *nv = after_v;
        long next_rows = after_rows;
        if (next < blocks) {
            nk = k + next * block_rows * D; nv = v + next * block_rows * D;
            next_rows = length - next * block_rows < block_rows ? length - next * block_rows : block_rows;
        }
        step(D, G, rows, scale, q, k + j * block_rows * D, v + j * block_rows * D, out + lane * size, head_stride,
             state + (lane - from) * 2 * G, round == 0, scores, score_stride, nk, nv, nk ? next_rows : 0);
        round = next_round; lane = next_lane; j = next;
    }
    for (long l = from; l < to; l++) {
        for (long g = 0; g < G; g++) {
            float *record = out + g * head_stride + l * size;
            if (l >= blocks) {
                for (long d = 0; d < D; d++) record[d] = 0;
                record[D] = -INFINITY;
                continue;
            }
            const float *s = state + ((l - from) * G + g) * 2;
            const float inverse = 1 / s[1];
            for (long d = 0; d < D; d++) record[d] *= inverse;
            record[D] = s[0] + logf(s[1]);
        }
    }
}

/// The exported kernel NAME of CDecode.h: the lane walk around STEP, with ATTRIBUTES (its target).
#define LEAN_LANES_DEFINE(NAME, STEP, ATTRIBUTES) \
ATTRIBUTES void NAME(long D, long G, float scale, const float *q, const float *k, const float *v, long length, \
                     long block_rows, long lanes, long from, long to, float *out, long head_stride, float *scratch, \
                     long score_stride, const float *after_k, const float *after_v, long after_rows) { \
    lean_lanes(STEP, D, G, scale, q, k, v, length, block_rows, lanes, from, to, out, head_stride, scratch, score_stride, \
               after_k, after_v, after_rows); \
}
