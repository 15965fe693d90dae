/* interp.c: evenly spaced latent codes between two others, linear or spherical (rnvp_interpolate_latents).
 * Leaves out encoding and decoding (flow.c): callers encode the ends and decode the points. */
#include "internal.h"

#include <math.h>

enum rnvp_status rnvp_interpolate_latents(float *z_out, const float *za, const float *zb, int d,
                                          int steps, int spherical, rnvp_error *err)
{
    if (!z_out || !za || !zb || d < 1) return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_interpolate_latents: NULL or empty latents");
    if (steps < 2) return rnvpi_fail(err, RNVP_ERR_ARG, "steps is %d, expected at least 2 (the two ends)", steps);
    double na = 0, nb = 0, dot = 0;
    for (int j = 0; j < d; j++) {
        na += (double)za[j] * za[j];
        nb += (double)zb[j] * zb[j];
        dot += (double)za[j] * zb[j];
    }
    double w = 0, sw = 0;
    if (spherical && na > 0 && nb > 0) {
        double c = dot / sqrt(na * nb);
        w = acos(c < -1 ? -1 : c > 1 ? 1 : c);
        sw = sin(w);
    }
    const int slerp = spherical && sw > 1e-6;
    for (int k = 0; k < steps; k++) {
        float *z = z_out + (size_t)k * d;
        if (k == 0 || k == steps - 1) {   /* the ends exactly */
            const float *src = k == 0 ? za : zb;
            for (int j = 0; j < d; j++) z[j] = src[j];
            continue;
        }
        const double t = (double)k / (steps - 1);
        const double ca = slerp ? sin((1 - t) * w) / sw : 1 - t, cb = slerp ? sin(t * w) / sw : t;
        for (int j = 0; j < d; j++) z[j] = (float)(ca * za[j] + cb * zb[j]);
    }
    return RNVP_OK;
}
