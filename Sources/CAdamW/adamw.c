// AdamW's update (see include/CAdamW.h). Compiled without FP contraction: each path must round
// exactly as the written expression does.
#pragma clang fp contract(off)
#include "CAdamW.h"
#include <math.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/// Lanes past the vector body (and every lane on a CPU without AVX-512).
static void update_scalar(float *p, const float *g, float *m, float *v, size_t from, size_t count, float b1,
                          float b2, float eps, float scale, float shrink, float step_size, float root_correction2) {
    const float c1 = 1 - b1, c2 = 1 - b2;
    for (size_t i = from; i < count; i++) {
        float gi = g[i] * scale;
        float mi = b1 * m[i] + c1 * gi;
        float vi = b2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * shrink - step_size * mi / (sqrtf(vi) / root_correction2 + eps);
    }
}

#if defined(__x86_64__)
/// 16 lanes at a time; returns how many it did (a multiple of 16).
__attribute__((target("avx512f")))
static size_t update_avx512(float *p, const float *g, float *m, float *v, size_t count, float b1, float b2,
                            float eps, float scale, float shrink, float step_size, float root_correction2) {
    const __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2), vc1 = _mm512_set1_ps(1 - b1);
    const __m512 vc2 = _mm512_set1_ps(1 - b2), ve = _mm512_set1_ps(eps), vscale = _mm512_set1_ps(scale);
    const __m512 vshrink = _mm512_set1_ps(shrink), vstep = _mm512_set1_ps(step_size);
    const __m512 vroot = _mm512_set1_ps(root_correction2);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), vscale);
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(vb1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(vc1, gi));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(vb2, _mm512_loadu_ps(v + i)), _mm512_mul_ps(_mm512_mul_ps(vc2, gi), gi));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        __m512 denominator = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), vroot), ve);
        __m512 delta = _mm512_div_ps(_mm512_mul_ps(vstep, mi), denominator);
        _mm512_storeu_ps(p + i, _mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(p + i), vshrink), delta));
    }
    return i;
}
#endif

void tessera_adamw_update(float *p, const float *g, float *m, float *v, size_t count, float b1, float b2,
                          float eps, float scale, float shrink, float step_size, float root_correction2, int wide) {
    size_t done = 0;
#if defined(__x86_64__)
    if (wide) done = update_avx512(p, g, m, v, count, b1, b2, eps, scale, shrink, step_size, root_correction2);
#else
    (void)wide;
#endif
    update_scalar(p, g, m, v, done, count, b1, b2, eps, scale, shrink, step_size, root_correction2);
}
