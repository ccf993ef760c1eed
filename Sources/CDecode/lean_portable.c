// The portable block kernel of decode attention (CDecode.h): plain loops, for CPUs without
// AVX2 + FMA. No contraction into fused multiply-adds: the same bits from any compiler flags.
#pragma STDC FP_CONTRACT OFF
#include "CDecode.h"
#include <math.h>

void tessera_lean_block_portable(long D, long G, long rows, float scale,
                                 const float *q, const float *k, const float *v,
                                 float *out, long head_stride, float *scores, long score_stride,
                                 const float *next_k, const float *next_v, long next_rows) {
    (void)next_k; (void)next_v; (void)next_rows;
    for (long g = 0; g < G; g++) {
        const float *qg = q + g * D;
        float *s = scores + g * score_stride, *record = out + g * head_stride;
        float maximum = -INFINITY;
        for (long j = 0; j < rows; j++) {
            float dot = 0;
            for (long d = 0; d < D; d++) dot += qg[d] * k[j * D + d];
            s[j] = dot * scale;
            if (s[j] > maximum) maximum = s[j];
        }
        float total = 0;
        for (long j = 0; j < rows; j++) { s[j] = expf(s[j] - maximum); total += s[j]; }
        for (long d = 0; d < D; d++) record[d] = 0;
        for (long j = 0; j < rows; j++)
            for (long d = 0; d < D; d++) record[d] += s[j] * v[j * D + d];
        const float inverse = 1 / total;
        for (long d = 0; d < D; d++) record[d] *= inverse;
        record[D] = maximum + logf(total);
    }
}
