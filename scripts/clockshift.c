/*
 * clockshift.so: shifts the wall clock (CLOCK_REALTIME, gettimeofday, time) of a process by
 * CLOCKSHIFT_SECONDS and touches nothing else. scripts/test.sh preloads it into the Postgres
 * of the shifted-clock passes instead of libfaketime: libfaketime runs each wrapped wait
 * (epoll_wait, poll, select, ...) with faking switched off, so a SIGALRM that lands in one
 * (every lock wait of a backend) reads the real clock in Postgres' timeout handler, and each
 * timeout then fires at once (lock waits cancelled as statement timeouts) or never (no
 * deadlock detection). This shim keeps no state that a signal handler could see half-made.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long shift_ns;
static int (*real_clock_gettime)(clockid_t, struct timespec *);

__attribute__((constructor)) static void clockshift_init(void) {
    const char *s = getenv("CLOCKSHIFT_SECONDS");
    shift_ns = s ? atoll(s) * 1000000000LL : 0;
    real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
}

static int shifted(clockid_t id) {
    return id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && shifted(id) && shift_ns != 0) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + shift_ns;
        ts->tv_sec = (time_t)(ns / 1000000000LL);
        ts->tv_nsec = (long)(ns % 1000000000LL);
        if (ts->tv_nsec < 0) {
            ts->tv_nsec += 1000000000L;
            ts->tv_sec -= 1;
        }
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
