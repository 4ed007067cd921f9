/* Build by hand (from examples/): cc -O2 -fPIC -shared -Wall -I../csrc/include -o out/libecho_host.so echo-host/echo.c */
/*
 * echo-host — the simplest kind of dlhost plugin: *host-driven*.
 *
 * The plugin starts no thread and imports nothing from the host: it exports
 * dlhost_open / dlhost_handle / dlhost_close and dlhost's own poll thread
 * calls them (and `runtime.callSync()` may call dlhost_handle directly on the
 * JS thread). Because it imports no host symbol, this library can be
 * dlopen'ed by any program, not only by dlhost.
 *
 * Behaviour (relied on by tests, demos and benchmarks; identical in every
 * example plugin):
 *   "fail:N"   rc = N (decimal, optional sign; no digits -> 1), body "failed"
 *   "cfg"      the cfg the runtime was opened with, byte for byte
 *   "version"  the string PLUGIN_VERSION (default "1"; -DPLUGIN_VERSION='"2"')
 *   "count"    decimal number of requests this runtime has handled, this one
 *              included (shows whether two load()s share one runtime)
 *   "pid"      decimal getpid() (shows which process serves the call)
 *   "sleep:N"  sleeps N milliseconds (at most one hour), then echoes
 *   anything else, including the empty request: echoed byte for byte
 *              (binary-safe: NUL bytes are data; empty in -> empty out)
 * A cfg that is exactly "fail-init" makes dlhost_open return NULL, which
 * fails load() with ERR_INIT_FAILED.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dlhost.h"

/* demo.js makes new versions by rewriting the #define line below: keep it. */
#ifndef PLUGIN_VERSION
#define PLUGIN_VERSION "1"
#endif

/* One runtime's state: what dlhost_open returns and dlhost passes back. */
struct echo_state {
    char *cfg;              /* private copy; the host's cfg dies after open */
    size_t cfg_len;
    unsigned long calls;    /* atomic: callSync may run beside the poll thread */
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

/* --------------------------------------------------------- plugin ABI */

DLHOST_EXPORT void *dlhost_open(const char *cfg, size_t len)
{
    struct echo_state *s;
    int ok = 1;
    if (!cfg) { cfg = ""; len = 0; }
    if (equals(cfg, len, "fail-init")) return NULL; /* -> ERR_INIT_FAILED */
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    /* Keep a copy: `cfg` belongs to the host and is valid during this call only. */
    s->cfg = dup_bytes(cfg, len, &ok);
    if (!ok) { free(s); return NULL; }
    s->cfg_len = len;
    return s;
}

DLHOST_EXPORT int dlhost_handle(void *state, const void *request, size_t len,
                                void **rsp, size_t *rsp_len)
{
    struct echo_state *s = state;
    const char *req = request;
    const void *body = req; /* by default: echo */
    size_t body_len = len;
    char num[32];
    int rc = 0, ok = 1;
    unsigned long n;

    n = __atomic_add_fetch(&s->calls, 1, __ATOMIC_RELAXED);

    if (starts_with(req, len, "fail:")) {
        rc = (int)parse_num(req + 5, len - 5, INT_MIN, INT_MAX, 1);
        body = "failed";
        body_len = 6;
    } else if (equals(req, len, "cfg")) {
        body = s->cfg;
        body_len = s->cfg_len;
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

    /* Always set both outputs; the host frees *rsp (NULL = empty answer). */
    *rsp = dup_bytes(body, body_len, &ok);
    *rsp_len = ok ? body_len : 0;
    return ok ? rc : ENOMEM;
}

DLHOST_EXPORT void dlhost_close(void *state)
{
    struct echo_state *s = state;
    if (!s) return;
    free(s->cfg);
    free(s);
}

/* Compile-time check that the exports match the types in dlhost.h. */
_Static_assert(__builtin_types_compatible_p(__typeof__(&dlhost_open), dlhost_open_fn),
               "dlhost_open does not match dlhost_open_fn");
_Static_assert(__builtin_types_compatible_p(__typeof__(&dlhost_handle), dlhost_handle_fn),
               "dlhost_handle does not match dlhost_handle_fn");
_Static_assert(__builtin_types_compatible_p(__typeof__(&dlhost_close), dlhost_close_fn),
               "dlhost_close does not match dlhost_close_fn");
