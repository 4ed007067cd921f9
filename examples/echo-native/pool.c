/* Build by hand (from examples/): cc -O2 -fPIC -shared -Wall -pthread -I../csrc/include -o out/libecho_native.so echo-native/pool.c */
/*
 * echo-native — a *plugin-driven* dlhost plugin in C: a pool of pthreads.
 *
 * dlhost_init() copies the cfg, starts N detached threads (N from the cfg:
 * "threads=4" or JSON {"threads":4}; default 2, at most 64) and returns 0.
 * Each thread loops on dlhost_task_poll_batch(), which hands it up to 64
 * ready tasks at once, and answers every task with dlhost_task_respond()
 * and a malloc'd body (the host frees it). When a poll returns 0 the runtime
 * is unloading: the thread frees what it owns and exits *without touching the
 * queue again*.
 *
 * The host functions (dlhost_task_poll_batch, ...) are not linked in: they are
 * undefined symbols resolved at dlopen time against the dlhost addon, which
 * makes them globally visible before it loads any plugin.
 *
 * Unload safety. Before dlhost dlclose()s this library it waits until a poll
 * has returned the end of the queue and every thread that ever polled it has
 * exited, so no thread can still be running our code when it is unmapped. The
 * host can only know about a thread once it has polled, though; so no thread
 * of the pool leaves before all its siblings have seen the end of the queue
 * too (the exit barrier in leave()). That way every thread the pool started
 * is known to the host before the first one exits, and the last one out frees
 * the shared state.
 *
 * Behaviour (relied on by tests, demos and benchmarks; identical in every
 * example plugin):
 *   "fail:N"   rc = N (decimal, optional sign; no digits -> 1), body "failed"
 *   "cfg"      the cfg the runtime was initialised with, byte for byte
 *   "version"  the string PLUGIN_VERSION (default "1"; -DPLUGIN_VERSION='"2"')
 *   "count"    decimal number of requests this runtime has handled, this one
 *              included
 *   "pid"      decimal getpid()
 *   "sleep:N"  sleeps N milliseconds (at most one hour), then echoes
 *   anything else, including the empty request: echoed byte for byte
 * dlhost_init returns 7 (ERR_INIT_FAILED, no thread started) when the cfg
 * contains "fail-init", and 2 when the host speaks another ABI version.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dlhost.h"

#ifndef PLUGIN_VERSION
#define PLUGIN_VERSION "1"
#endif

#define BATCH 64        /* tasks taken per poll */
#define MAX_THREADS 64

/* One runtime: shared by all the threads of its pool. */
struct pool {
    dlhost_queue *q;        /* valid until a poll returns 0 */
    char *cfg;              /* private copy (the host's cfg dies after init) */
    size_t cfg_len;
    unsigned long calls;    /* atomic */

    /* exit barrier, see leave() */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned started;       /* threads created */
    unsigned finished;      /* threads that saw the end of the queue */
    unsigned gone;          /* threads past the barrier */
};

/* ------------------------------------------------------------ helpers */

static int equals(const char *req, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len == n && memcmp(req, word, n) == 0;
}

static int starts_with(const char *req, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(req, prefix, n) == 0;
}

/* Decimal number in s[0..n): optional sign, then digits, stops at the first
 * non-digit, clamped to [lo, hi]. Returns `dflt` when there is no digit. */
static long long parse_num(const char *s, size_t n, long long lo, long long hi,
                           long long dflt)
{
    size_t i = 0;
    int neg = 0, any = 0;
    long long v = 0;
    if (i < n && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        any = 1;
        if (v < LLONG_MAX / 16) v = v * 10 + (s[i] - '0');
    }
    if (!any) return dflt;
    if (neg) v = -v;
    return v < lo ? lo : v > hi ? hi : v;
}

/* The number after `key` in the cfg, skipping the separators of "key=4",
 * "key: 4" and {"key":4}: the first occurrence of `key` followed by a number.
 * `dflt` when there is none. */
static long long cfg_num(const char *cfg, size_t len, const char *key,
                         long long lo, long long hi, long long dflt)
{
    size_t k = strlen(key), i, j;
    for (i = 0; i + k <= len; i++) {
        if (memcmp(cfg + i, key, k) != 0) continue;
        for (j = i + k; j < len && cfg[j] && strchr("\"'=: \t", cfg[j]); j++)
            ;
        if (j < len && ((cfg[j] >= '0' && cfg[j] <= '9') ||
                        ((cfg[j] == '-' || cfg[j] == '+') && j + 1 < len &&
                         cfg[j + 1] >= '0' && cfg[j + 1] <= '9')))
            return parse_num(cfg + j, len - j, lo, hi, dflt);
    }
    return dflt;
}

static int contains(const char *s, size_t len, const char *word)
{
    size_t n = strlen(word), i;
    for (i = 0; i + n <= len; i++)
        if (memcmp(s + i, word, n) == 0) return 1;
    return 0;
}

static void sleep_ms(long long ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ; /* a signal cut the sleep short: sleep the rest */
}

/* A malloc'd copy of n bytes (NUL-terminated for convenience), or NULL for an
 * empty answer. Sets *ok to 0 when malloc fails. */
static char *dup_bytes(const void *p, size_t n, int *ok)
{
    char *r;
    if (n == 0) return NULL; /* NULL means an empty response */
    r = malloc(n + 1);
    if (!r) { *ok = 0; return NULL; }
    memcpy(r, p, n);
    r[n] = '\0';
    return r;
}

/* ------------------------------------------------------------- serving */

/* Answers one task, exactly once. */
static void serve(struct pool *p, dlhost_task *t)
{
    size_t len = 0;
    const char *req = dlhost_task_request(t, &len); /* host-owned, NUL follows */
    const void *body = req; /* by default: echo */
    size_t body_len = len;
    char num[32];
    char *rsp;
    int rc = 0, ok = 1;
    unsigned long n = __atomic_add_fetch(&p->calls, 1, __ATOMIC_RELAXED);

    if (starts_with(req, len, "fail:")) {
        rc = (int)parse_num(req + 5, len - 5, INT_MIN, INT_MAX, 1);
        body = "failed";
        body_len = 6;
    } else if (equals(req, len, "cfg")) {
        body = p->cfg;
        body_len = p->cfg_len;
    } else if (equals(req, len, "version")) {
        body = PLUGIN_VERSION;
        body_len = strlen(PLUGIN_VERSION);
    } else if (equals(req, len, "count")) {
        body_len = (size_t)snprintf(num, sizeof num, "%lu", n);
        body = num;
    } else if (equals(req, len, "pid")) {
        body_len = (size_t)snprintf(num, sizeof num, "%ld", (long)getpid());
        body = num;
    } else if (starts_with(req, len, "sleep:")) {
        sleep_ms(parse_num(req + 6, len - 6, 0, 3600000, 0));
    }

    rsp = dup_bytes(body, body_len, &ok);
    if (!ok) { rc = ENOMEM; body_len = 0; }
    /* The host takes ownership of rsp (malloc'd, or NULL = empty) and frees
     * it; after this call t is gone. */
    dlhost_task_respond(t, rc, rsp, body_len);
}

static void free_pool(struct pool *p)
{
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->cfg);
    free(p);
}

/* Exit barrier: a thread that has seen the end of the queue waits until every
 * thread of the pool has seen it too. So every thread has polled (and is known
 * to the host) before any thread exits, and the host, which waits for all the
 * threads that polled, cannot dlclose the library while one of ours is still
 * on its way to its first poll. The last thread out frees the pool. */
static void leave(struct pool *p)
{
    int last;
    pthread_mutex_lock(&p->mu);
    if (++p->finished == p->started) pthread_cond_broadcast(&p->cv);
    while (p->finished < p->started) pthread_cond_wait(&p->cv, &p->mu);
    last = ++p->gone == p->started;
    pthread_mutex_unlock(&p->mu);
    if (last) free_pool(p);
}

static void *worker(void *arg)
{
    struct pool *p = arg;
    dlhost_task *tasks[BATCH];
    size_t n, i;

    /* Blocks until at least one task is ready; 0 means the runtime is
     * unloading and every task queued before the unload has been taken. */
    while ((n = dlhost_task_poll_batch(p->q, tasks, BATCH)) > 0)
        for (i = 0; i < n; i++) serve(p, tasks[i]);

    /* p->q must not be touched from here on. */
    leave(p);
    return NULL;
}

/* --------------------------------------------------------- plugin ABI */

/* Called once per runtime on the JS thread: keep it short. */
DLHOST_EXPORT int dlhost_init(const char *cfg, size_t cfg_len, dlhost_queue *q)
{
    struct pool *p;
    pthread_attr_t attr;
    pthread_t tid;
    unsigned i, nthreads;
    int ok = 1;

    if (dlhost_abi_version() < DLHOST_ABI_VERSION) return 2; /* an older host lacks what we use */
    if (!cfg) { cfg = ""; cfg_len = 0; }
    if (contains(cfg, cfg_len, "fail-init")) return 7; /* -> ERR_INIT_FAILED */
    nthreads = (unsigned)cfg_num(cfg, cfg_len, "threads", 1, MAX_THREADS, 2);

    p = calloc(1, sizeof *p);
    if (!p) return ENOMEM;
    p->q = q;
    p->cfg = dup_bytes(cfg, cfg_len, &ok);
    p->cfg_len = cfg_len;
    if (!ok || pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p->cfg);
        free(p);
        return ENOMEM;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p->cfg);
        free(p);
        return ENOMEM;
    }

    /* Detached: nobody joins them; each exits on its own after the barrier.
     * p->mu is held while they are created so `started` is final before any
     * thread can reach the barrier. */
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&p->mu);
    for (i = 0; i < nthreads; i++) {
        if (pthread_create(&tid, &attr, worker, p) != 0) break;
        p->started++;
    }
    pthread_mutex_unlock(&p->mu);
    pthread_attr_destroy(&attr);

    if (p->started == 0) { /* no thread polls q: we may still fail */
        free_pool(p);
        return EAGAIN;
    }
    /* Some threads run (maybe fewer than asked): they poll q, so the runtime
     * is live and we must report success. */
    return 0;
}

_Static_assert(__builtin_types_compatible_p(__typeof__(&dlhost_init), dlhost_init_fn),
               "dlhost_init does not match dlhost_init_fn");
