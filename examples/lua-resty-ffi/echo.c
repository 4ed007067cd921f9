/* Build by hand (from examples/): cc -O2 -fPIC -shared -Wall -pthread -I../csrc/include -o out/libffi_echo.so lua-resty-ffi/echo.c */
/*
 * ffi-echo — a plugin written for lua-resty-ffi (https://github.com/kingluo/lua-resty-ffi),
 * exactly as one is written for OpenResty, which dlhost loads unmodified.
 *
 * It needs no dlhost header: it declares lua-resty-ffi's three host functions
 * itself, exports `int libffi_init(char *cfg, void *tq)`, and starts one
 * detached thread that loops poll / get_req / respond. The host functions are
 * undefined symbols resolved at dlopen time (nginx provides them under
 * lua-resty-ffi, the dlhost addon under dlhost). The same .so runs under both.
 *
 * lua-resty-ffi's rules, which this file follows:
 *  - cfg is a NUL-terminated copy that the plugin may modify and that is freed
 *    after libffi_init returns: keep your own copy. Return 0 on success.
 *  - the request is owned by the host, NUL-terminated, its length an `int`.
 *  - the response is malloc'd by the plugin and freed by the host;
 *    rsp_len > 0: rsp holds rsp_len bytes (binary-safe);
 *    rsp_len == 0 and rsp != NULL: rsp is a C string (strlen);
 *    rsp == NULL: no body (nil in Lua).
 *  - poll returns NULL once the runtime is unloaded: the thread cleans up
 *    and never touches tq again. (lua-resty-ffi frees its queue right there
 *    and hands NULL to one poller only; that is why lua-resty-ffi plugins poll
 *    from exactly one thread, as this one does.)
 *
 * Behaviour (relied on by tests, demos and benchmarks; identical in every
 * example plugin, plus "nobody"):
 *   "fail:N"   rc = N (decimal, optional sign; no digits -> 1), body "failed"
 *   "cfg"      the cfg given to libffi_init (empty when it was NULL)
 *   "version"  PLUGIN_VERSION (default "1"; -DPLUGIN_VERSION='"2"'), sent as
 *              a C string with rsp_len = 0
 *   "nobody"   rc 0 and rsp = NULL (no body)
 *   "count"    decimal number of requests this runtime has handled, this one
 *              included
 *   "pid"      decimal getpid()
 *   "sleep:N"  sleeps N milliseconds (at most one hour), then echoes
 *   anything else: echoed byte for byte with the length passed explicitly,
 *              NUL bytes included; the empty request gets the empty C string
 *              "" (rsp_len 0), i.e. an empty body - not "no body".
 * libffi_init returns 7 when the cfg contains "fail-init" (no thread started).
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

#ifndef PLUGIN_VERSION
#define PLUGIN_VERSION "1"
#endif

/* lua-resty-ffi's host API, declared the way lua-resty-ffi plugins do. */
extern void *ngx_http_lua_ffi_task_poll(void *p);
extern char *ngx_http_lua_ffi_get_req(void *tsk, int *len);
extern void ngx_http_lua_ffi_respond(void *tsk, int rc, char *rsp, int rsp_len);

/* Not needed to build; when dlhost.h is on the include path, the compiler
 * checks that the declarations above agree with dlhost's. */
#if defined(__has_include)
#if __has_include("dlhost.h")
#include "dlhost.h"
#endif
#endif

struct echo {
    void *tq;               /* the task queue; not touched after poll -> NULL */
    char *cfg;              /* our copy: the host frees its cfg after init */
    unsigned long calls;
};

static int equals(const char *req, int len, const char *word)
{
    int n = (int)strlen(word);
    return len == n && memcmp(req, word, (size_t)n) == 0;
}

static int starts_with(const char *req, int len, const char *prefix)
{
    int n = (int)strlen(prefix);
    return len >= n && memcmp(req, prefix, (size_t)n) == 0;
}

/* Decimal number in s[0..n): optional sign, then digits, clamped to [lo, hi];
 * `dflt` when there is no digit. */
static long long parse_num(const char *s, int n, long long lo, long long hi,
                           long long dflt)
{
    int i = 0, neg = 0, any = 0;
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
        ;
}

/* malloc'd copy of n bytes plus a NUL (so it is also a valid C string). */
static char *copy(const char *p, int n)
{
    char *r = malloc((size_t)n + 1);
    if (r) {
        if (n > 0) memcpy(r, p, (size_t)n);
        r[n] = '\0';
    }
    return r;
}

static void handle(struct echo *e, void *tsk)
{
    int len = 0;
    char *req = ngx_http_lua_ffi_get_req(tsk, &len); /* host-owned */
    char num[32];
    char *rsp;
    int rc = 0, n;
    unsigned long calls = __atomic_add_fetch(&e->calls, 1, __ATOMIC_RELAXED);

    if (len < 0) len = 0;
    if (starts_with(req, len, "fail:")) {
        rc = (int)parse_num(req + 5, len - 5, INT_MIN, INT_MAX, 1);
        rsp = copy("failed", 6);
        ngx_http_lua_ffi_respond(tsk, rc, rsp, rsp ? 6 : 0);
    } else if (equals(req, len, "cfg")) {
        n = (int)strlen(e->cfg);
        rsp = copy(e->cfg, n);
        ngx_http_lua_ffi_respond(tsk, rsp ? 0 : ENOMEM, rsp, n);
    } else if (equals(req, len, "version")) {
        /* rsp_len == 0 with rsp != NULL: the host takes strlen(rsp). */
        rsp = strdup(PLUGIN_VERSION);
        ngx_http_lua_ffi_respond(tsk, rsp ? 0 : ENOMEM, rsp, 0);
    } else if (equals(req, len, "nobody")) {
        ngx_http_lua_ffi_respond(tsk, 0, NULL, 0); /* no body at all */
    } else if (equals(req, len, "count") || equals(req, len, "pid")) {
        n = equals(req, len, "count")
                ? snprintf(num, sizeof num, "%lu", calls)
                : snprintf(num, sizeof num, "%ld", (long)getpid());
        rsp = copy(num, n);
        ngx_http_lua_ffi_respond(tsk, rsp ? 0 : ENOMEM, rsp, rsp ? n : 0);
    } else {
        if (starts_with(req, len, "sleep:"))
            sleep_ms(parse_num(req + 6, len - 6, 0, 3600000, 0));
        /* Echo, binary-safe: the length is passed explicitly. For len == 0
         * this is "" with rsp_len 0, i.e. the empty C string. */
        rsp = copy(req, len);
        ngx_http_lua_ffi_respond(tsk, rsp ? 0 : ENOMEM, rsp, rsp ? len : 0);
    }
}

static void *echo_thread(void *arg)
{
    struct echo *e = arg;
    for (;;) {
        void *tsk = ngx_http_lua_ffi_task_poll(e->tq);
        if (tsk == NULL) break; /* unloaded: never touch tq again */
        handle(e, tsk);
    }
    free(e->cfg);
    free(e);
    return NULL;
}

int libffi_init(char *cfg, void *tq)
{
    struct echo *e;
    pthread_attr_t attr;
    pthread_t thd;
    int rc;

    if (cfg && strstr(cfg, "fail-init")) return 7;
    e = calloc(1, sizeof *e);
    if (!e) return ENOMEM;
    e->tq = tq;
    e->cfg = strdup(cfg ? cfg : ""); /* cfg is freed after we return */
    if (!e->cfg) { free(e); return ENOMEM; }

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(&thd, &attr, echo_thread, e);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        free(e->cfg);
        free(e);
        return rc;
    }
    return 0;
}

#if defined(DLHOST_H)
_Static_assert(__builtin_types_compatible_p(__typeof__(&libffi_init), libffi_init_fn),
               "libffi_init does not match libffi_init_fn");
#endif
