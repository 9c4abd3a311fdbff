/* Clocks and sleeping for every process: the one place that reads the
 * monotonic clock (timeouts, rates, logs of how long something took).
 * Thread-safe; no state. */
#ifndef MOE_TIME_H
#define MOE_TIME_H

/* Seconds and milliseconds of CLOCK_MONOTONIC (an arbitrary origin). */
double moe_now_sec(void);
double moe_now_ms(void);

/* Sleeps ms milliseconds (interrupted by a signal: returns early). */
void moe_sleep_ms(long ms);

#endif
