// The portable kernel of decode attention (CDecode.h): plain loops for the block step, for CPUs
// without AVX2 + FMA. No contraction into fused multiply-adds: the same bits from any compiler flags.
#pragma STDC FP_CONTRACT OFF
#include "lean_lanes.h"

static void step_portable(long D, long G, long rows, float scale, const float *q, const float *k, const float *v,
                          float *out, long head_stride, float *state, int first, float *scores, long score_stride,
                          const float *next_k, const float *next_v, long next_rows) {
    (void)next_k; (void)next_v; (void)next_rows;
    for (long g = 0; g < G; g++) {
        const float *qg = q + g * D;
        float *s = scores + g * score_stride, *record = out + g * head_stride, *st = state + 2 * g;
        float block_max = -INFINITY;
        for (long j = 0; j < rows; j++) {
            float dot = 0;
            for (long d = 0; d < D; d++) dot += qg[d] * k[j * D + d];
            s[j] = dot * scale;
            if (s[j] > block_max) block_max = s[j];
        }
        float maximum;
        const float alpha = lean_rescale(st, first, block_max, &maximum);
        float total = 0;
        for (long j = 0; j < rows; j++) { s[j] = expf(s[j] - maximum); total += s[j]; }
        st[1] = first ? total : st[1] * alpha + total;
        st[0] = maximum;
        for (long d = 0; d < D; d++) record[d] = first ? 0 : record[d] * alpha;
        for (long j = 0; j < rows; j++)
            for (long d = 0; d < D; d++) record[d] += s[j] * v[j * D + d];
    }
}

LEAN_LANES_DEFINE(tessera_lean_lanes_portable, step_portable, )
