/* kflood: the peer of dlhost_emit for the two-way benchmark. A thread of a
 * plain C library calls a JS callback N times, through koffi's callbacks
 * from secondary threads (each call queued to the JS thread). */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*kflood_cb)(const uint8_t *msg, size_t len);

struct job {
    kflood_cb cb;
    long n;
};
static struct job job;

static void *run(void *arg)
{
    struct job *j = arg;
    static const uint8_t msg[16] = "0123456789abcdef";
    for (long i = 0; i < j->n; i++) j->cb(msg, sizeof msg);
    return NULL;
}

/* Starts the thread and returns at once. */
int kflood_start(kflood_cb cb, long n)
{
    pthread_t th;
    job.cb = cb;
    job.n = n;
    if (pthread_create(&th, NULL, run, &job) != 0) return -1;
    pthread_detach(th);
    return 0;
}
