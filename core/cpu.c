/* cpu.c: picks OpenBLAS's kernels on CPUs its runtime detection does not recognise (virtual
 * "Intel Xeon Processor" models fall back to the SSE3 "Prescott" kernels, 3-4x slower) or runs
 * on older kernels than it could (AVX-512 CPUs given the AVX2 "Haswell" set). */
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
    /* AVX2 kernel sets that a CPU with AVX-512 outgrows (OpenBLAS 0.3.21 runs AMD Zen 4/5 on
     * its Haswell kernels) */
    int avx2_only = !strcasecmp(core, "haswell") || !strcasecmp(core, "zen");
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    const char *want = NULL;
    if (avx512 && (generic || avx2_only)) want = "SkylakeX";   /* AVX-512 kernels */
    else if (avx2 && generic) want = "Haswell";                /* AVX2 + FMA kernels */
    if (!want) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE");               /* exec failed: carry on as we were */
#else
    (void)argv;
#endif
}
