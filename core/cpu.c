/* cpu.c: picks OpenBLAS's kernels on CPUs its runtime detection does not recognise (virtual
 * "Intel Xeon Processor" models fall back to the SSE3 "Prescott" kernels, 3-4x slower). */
#include "internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *rnvp_blas_core(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "unknown";
}

void rnvp_blas_select_core(char **argv)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (getenv("OPENBLAS_CORETYPE") || getenv("REALNVP_NO_REEXEC") || !argv) return;
    const char *core = rnvp_blas_core();
    int generic = !strcasecmp(core, "prescott") || !strcasecmp(core, "core2") ||
                  !strcasecmp(core, "nehalem") || !strcasecmp(core, "unknown") ||
                  !strcasecmp(core, "katmai") || !strcasecmp(core, "atom");
    __builtin_cpu_init();
    if (!generic || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);   /* AVX2 + FMA kernels */
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE");               /* exec failed: carry on as we were */
#else
    (void)argv;
#endif
}
