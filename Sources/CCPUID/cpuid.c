#include "CCPUID.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

void tessera_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
    unsigned int a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(leaf, subleaf, &a, &b, &c, &d)) { a = b = c = d = 0; }
    regs[0] = a; regs[1] = b; regs[2] = c; regs[3] = d;
}

uint64_t tessera_xgetbv(uint32_t index) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(index));
    return ((uint64_t)edx << 32) | eax;
}
#else
void tessera_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
    (void)leaf; (void)subleaf;
    regs[0] = regs[1] = regs[2] = regs[3] = 0;
}

uint64_t tessera_xgetbv(uint32_t index) { (void)index; return 0; }
#endif
