// The scalar tile update shared by every micro-kernel's edge tiles (not exported to Swift).
#pragma once
/// c[i·ldc + j] = alpha · tile[i·ldt + j] + beta · c[i·ldc + j] for i < mr, j < nr; beta == 0
/// does not read c. Multiply, multiply, add: the bits the vector updates give.
void tessera_gemm_update(const float *tile, long ldt, float *c, long ldc, long mr, long nr, float alpha, float beta);
