// AdamW's update in one pass over p, g, m and v (Sources/Kernels/AdamW.swift holds the threads
// and the step's constants). In C because Swift's SIMD square root is a scalar call per lane
// (sqrtf with its errno branch), which made the update compute-bound: the AVX-512 loop here
// runs at memory speed. Every element is the same chain of IEEE operations in every path (no
// contraction, sqrt and division correctly rounded), so the bits do not depend on the path.
#pragma once
#include <stddef.h>

/// For i < count, with gi = g[i]·scale:
///   m[i] = b1·m[i] + (1−b1)·gi;  v[i] = b2·v[i] + ((1−b2)·gi)·gi;
///   p[i] = p[i]·shrink − (step_size·m[i]) / (√v[i] / root_correction2 + eps).
/// `wide` != 0 uses AVX-512 (only when the CPU has AVX-512F).
void tessera_adamw_update(float *p, const float *g, float *m, float *v, size_t count, float b1, float b2,
                          float eps, float scale, float shrink, float step_size, float root_correction2, int wide);
