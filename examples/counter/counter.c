/*
 * counter — a host-driven dlhost plugin whose state survives hot reloads.
 *
 *   "hit:KEY"   counts one hit of KEY; answers its count
 *   "get:KEY"   the count of KEY
 *   "keys"      how many keys are counted
 *   "version"   PLUGIN_VERSION
 *
 * At a reload dlhost holds new calls, lets this version answer the calls it
 * has, calls its dlhost_state_export, then the new version's
 * dlhost_state_import, and lets the held calls go to the new version: no
 * hit is lost or counted twice. The state is a small versioned format:
 *
 *   "CNTR" u32 format, u32 entries, then per entry: u32 key length, the key,
 *   u64 count (all little-endian)
 *
 * A build that cannot read the format it is given refuses it (rc 2), and
 * dlhost keeps the old version serving with its counts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dlhost.h"

#ifndef PLUGIN_VERSION
#define PLUGIN_VERSION "1"
#endif
#define FORMAT 1u

struct entry {
    char *key;
    size_t len;
    uint64_t count;
};
struct counter {
    struct entry *e;
    size_t n, cap;
};

static struct entry *find(struct counter *c, const char *key, size_t len, int add)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].len == len && memcmp(c->e[i].key, key, len) == 0) return &c->e[i];
    if (!add) return NULL;
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 16;
        struct entry *e = realloc(c->e, cap * sizeof *e);
        if (!e) return NULL;
        c->e = e;
        c->cap = cap;
    }
    char *k = malloc(len ? len : 1);
    if (!k) return NULL;
    memcpy(k, key, len);
    c->e[c->n] = (struct entry){ k, len, 0 };
    return &c->e[c->n++];
}

static void clear(struct counter *c)
{
    for (size_t i = 0; i < c->n; i++) free(c->e[i].key);
    c->n = 0;
}

static int number(uint64_t n, void **rsp, size_t *rsp_len)
{
    char *out = malloc(24);
    if (!out) return 12;
    *rsp_len = (size_t)snprintf(out, 24, "%llu", (unsigned long long)n);
    *rsp = out;
    return 0;
}

void *dlhost_open(const char *cfg, size_t len)
{
    (void)cfg; (void)len;
    return calloc(1, sizeof(struct counter));
}

void dlhost_close(void *state)
{
    clear(state);
    free(((struct counter *)state)->e);
    free(state);
}

int dlhost_handle(void *state, const void *req, size_t len, void **rsp, size_t *rsp_len)
{
    struct counter *c = state;
    const char *r = req;
    if (len >= 4 && memcmp(r, "hit:", 4) == 0) {
        struct entry *e = find(c, r + 4, len - 4, 1);
        if (!e) return 12;
        return number(++e->count, rsp, rsp_len);
    }
    if (len >= 4 && memcmp(r, "get:", 4) == 0) {
        struct entry *e = find(c, r + 4, len - 4, 0);
        return number(e ? e->count : 0, rsp, rsp_len);
    }
    if (len == 4 && memcmp(r, "keys", 4) == 0) return number(c->n, rsp, rsp_len);
    if (len == 7 && memcmp(r, "version", 7) == 0) {
        *rsp = strdup(PLUGIN_VERSION);
        *rsp_len = strlen(PLUGIN_VERSION);
        return 0;
    }
    return 1;
}

static void put32(unsigned char **p, uint32_t v)
{
    for (int i = 0; i < 4; i++) *(*p)++ = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int dlhost_state_export(void *state, void **out, size_t *out_len)
{
    struct counter *c = state;
    size_t size = 12;
    for (size_t i = 0; i < c->n; i++) size += 4 + c->e[i].len + 8;
    unsigned char *b = malloc(size), *p = b;
    if (!b) return 12;
    memcpy(p, "CNTR", 4);
    p += 4;
    put32(&p, FORMAT);
    put32(&p, (uint32_t)c->n);
    for (size_t i = 0; i < c->n; i++) {
        put32(&p, (uint32_t)c->e[i].len);
        memcpy(p, c->e[i].key, c->e[i].len);
        p += c->e[i].len;
        for (int k = 0; k < 8; k++) *p++ = (unsigned char)(c->e[i].count >> (8 * k));
    }
    *out = b;
    *out_len = size;
    return 0;
}

/* Reads into a new table first: a refused state leaves this version as it
 * was (fresh), so stateRejected: 'fresh' starts it clean. */
int dlhost_state_import(void *state, const void *buf, size_t len)
{
    struct counter *c = state, next = { 0 };
    const unsigned char *p = buf, *end = p + len;
    if (len < 12 || memcmp(p, "CNTR", 4) != 0 || get32(p + 4) != FORMAT) return 2;
    uint32_t n = get32(p + 8);
    p += 12;
    int rc = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        uint32_t klen = end - p >= 4 ? get32(p) : 0;
        if (end - p < 4 || (size_t)(end - p - 4) < (size_t)klen + 8) { rc = 2; break; }
        p += 4;
        struct entry *e = find(&next, (const char *)p, klen, 1);
        if (!e) { rc = 12; break; }
        p += klen;
        for (int k = 0; k < 8; k++) e->count |= (uint64_t)p[k] << (8 * k);
        p += 8;
    }
    if (rc != 0) {
        clear(&next);
        free(next.e);
        return rc;
    }
    clear(c);
    free(c->e);
    *c = next;
    return 0;
}
