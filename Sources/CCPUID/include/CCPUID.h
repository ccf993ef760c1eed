// The x86 CPUID and XGETBV instructions, which Swift cannot emit; no logic lives here.
// On other architectures both report zeros (no x86 features).
#pragma once
#include <stdint.h>

/// Executes CPUID with EAX = leaf, ECX = subleaf; regs receives EAX, EBX, ECX, EDX.
/// Leaves above the CPU's maximum report zeros.
void tessera_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]);

/// XGETBV(index): which register states the operating system saves (XCR0 for index 0).
/// Zero when the CPU or the OS does not enable XSAVE (check CPUID.1:ECX.OSXSAVE first).
uint64_t tessera_xgetbv(uint32_t index);
