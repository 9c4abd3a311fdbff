/* Clocks and sleeping (see moe_time.h). */
#include "moe_time.h"

#include <time.h>

double moe_now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double moe_now_ms(void) { return 1e3 * moe_now_sec(); }

void moe_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
