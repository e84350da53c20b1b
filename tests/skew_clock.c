/* Shifts a process's wall clock by SKEW_SECONDS (LD_PRELOAD; see tests/skew.py). Only
 * CLOCK_REALTIME and what reads it (gettimeofday, time) move; the monotonic clock, which Python
 * times its sleeps and waits with, is left alone. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long skew_seconds(void) {
    static long cached = -1;
    static int known = 0;
    if (!known) {
        const char *value = getenv("SKEW_SECONDS");
        cached = value ? atol(value) : 0;
        known = 1;
    }
    return cached;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int result = (int)syscall(SYS_clock_gettime, clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) ts->tv_sec += skew_seconds();
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int result = clock_gettime(CLOCK_REALTIME, &ts);
    if (result == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return result;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
