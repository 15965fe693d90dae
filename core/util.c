/* util.c: error reporting, status names and the seeded random numbers of the core.
 * Leaves out everything model-specific. */
#include "internal.h"

#include <math.h>
#include <stdio.h>

enum rnvp_status rnvpi_fail(rnvp_error *err, enum rnvp_status st, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->status = st;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return st;
}

const char *rnvp_status_name(enum rnvp_status s)
{
    switch (s) {
    case RNVP_OK: return "ok";
    case RNVP_ERR_IO: return "io";
    case RNVP_ERR_FORMAT: return "format";
    case RNVP_ERR_ARG: return "argument";
    case RNVP_ERR_SIZE: return "size";
    case RNVP_ERR_NOMEM: return "out of memory";
    case RNVP_ERR_UNSUPPORTED: return "unsupported";
    }
    return "unknown";
}

/* splitmix64: a full-period 64-bit generator; used to seed and as the stream itself. */
uint64_t rnvpi_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in (0, 1): 53 random bits, never 0 */
double rnvpi_uniform(uint64_t *state)
{
    return ((rnvpi_splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* standard normal by Box-Muller (both values used in turn by the caller's loop) */
void rnvpi_gauss2(uint64_t *state, double *a, double *b)
{
    double u1 = rnvpi_uniform(state), u2 = rnvpi_uniform(state);
    double r = sqrt(-2.0 * log(u1));
    *a = r * cos(6.283185307179586 * u2);
    *b = r * sin(6.283185307179586 * u2);
}

void rnvp_sample_latents(float *z, int n, int d, double temp, uint64_t seed)
{
    rnvpi_sample_latents_from(z, 0, n, d, temp, seed);
}

void rnvpi_sample_latents_from(float *z, int first, int n, int d, double temp, uint64_t seed)
{
    for (int i = 0; i < n; i++) {
        /* image i's stream: (seed, first + i), so an image does not depend on the batch */
        uint64_t st = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(first + i + 1));
        rnvpi_splitmix64(&st);
        float *zi = z + (size_t)i * d;
        for (int j = 0; j < d; j += 2) {
            double a, b;
            rnvpi_gauss2(&st, &a, &b);
            zi[j] = (float)(temp * a);
            if (j + 1 < d) zi[j + 1] = (float)(temp * b);
        }
    }
}
