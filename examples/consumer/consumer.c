/* A program that uses the installed library: one FOOF direction on a 2x2 problem (Benzing 2022,
 * App. F) must move w = (0, 0) to (-1, 4). */
#include <kronfac.h>

#include <math.h>
#include <stdio.h>

int main(void)
{
    kf_context *ctx = NULL;
    /* Activations of the two data points a1 = (3, 1), a2 = (1, 0); A = sum a a^T, no 1/N here so
     * that the undamped direction is exactly the paper's. */
    const float a[4] = {10.0f, 3.0f, 3.0f, 1.0f};
    const float grad[2] = {-2.0f, -1.0f};
    float d[2] = {0.0f, 0.0f};
    if (kf_context_create(NULL, &ctx) != KF_OK) {
        return 1;
    }
    kf_status s = kf_foof_direction(ctx, 1, 2, grad, 2, a, 2, 0.0f, d, 2);
    kf_context_destroy(ctx);
    if (s != KF_OK) {
        fprintf(stderr, "kf_foof_direction: %s\n", kf_status_string(s));
        return 1;
    }
    printf("kronfac %s (%s): w = (%g, %g)\n", kf_version(), kf_build_info(), -d[0], -d[1]);
    return (fabsf(-d[0] + 1.0f) < 1e-4f && fabsf(-d[1] - 4.0f) < 1e-4f) ? 0 : 1;
}
