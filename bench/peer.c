/*
 * bench/peer.c — peers that dlhost's benchmarks measure in the same run, so
 * that dlhost's numbers can be read as ratios on a noisy machine. Built by
 * bench/run.js with the system C compiler into a temporary directory (never
 * part of the package). Plain N-API (C), no node-addon-api:
 *
 *   noop()              the cheapest N-API call there is (returns undefined)
 *   echoSync(u8)        what callSync does minus the plugin: type checks,
 *                       copy the request (with room for a NUL), malloc +
 *                       memcpy a response, napi_create_buffer_copy, free
 *   echoNoBuf(u8)       echoSync's work minus napi_create_buffer_copy: returns
 *                       the response length as a number (what a Buffer costs)
 *   echoInto(u8, out)   echoSync's work, the response written into a Uint8Array
 *                       the caller owns (a per-runtime slab): returns its length;
 *                       JS then copies it out (Buffer.allocUnsafe is pooled)
 *   echoPooled(u8)      echoSync's work, the response bump-allocated in an 8 KiB
 *                       ArrayBuffer pool the addon owns (like Buffer's own
 *                       pool): returns fresh * 2^27 + offset * 2^14 + length,
 *                       JS wraps a view; pool() is the current pool (fetch it
 *                       again when `fresh` is set)
 *   arrayBuffer(n)      napi_create_arraybuffer(n): what Drain pays per batch
 *   bufferCopy(n)       napi_create_buffer_copy of n bytes: what callSync pays
 *   makeCallback(fn)    napi_make_callback(fn) (runs the microtask checkpoint):
 *                       what Drain pays per batch to enter JS
 *   echoAsync(u8)       a napi_async_work round trip (libuv threadpool) that
 *                       echoes the request: Promise<Buffer>. The stock way an
 *                       addon offloads work from the JS thread, i.e. the
 *                       baseline for runtime.call().
 */
#include <node_api.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                       \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      napi_throw_error(env, NULL, "peer: N-API call failed: " #call);     \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

static napi_value Noop(napi_env env, napi_callback_info info) {
  (void)info;
  (void)env;
  return NULL; /* undefined */
}

static int get_bytes(napi_env env, napi_value v, void **p, size_t *len) {
  bool is_ta = false;
  napi_typedarray_type tt;
  napi_value ab;
  size_t off;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return -1;
  if (napi_get_typedarray_info(env, v, &tt, len, p, &ab, &off) != napi_ok) return -1;
  return tt == napi_uint8_array ? 0 : -1;
}

static napi_value EchoSync(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_valuetype type;
  void *p;
  size_t len;
  char small[512];
  void *rsp, *dst;
  napi_value out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_typeof(env, argv[0], &type));
  if (get_bytes(env, argv[0], &p, &len) != 0 || len >= sizeof small) {
    napi_throw_type_error(env, NULL, "echoSync(u8 < 512 bytes)");
    return NULL;
  }
  memcpy(small, p, len);
  small[len] = 0;
  rsp = malloc(len ? len : 1);
  memcpy(rsp, small, len);
  CHECK(napi_create_buffer_copy(env, len, rsp, &dst, &out));
  free(rsp);
  return out;
}

static napi_value EchoNoBuf(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  napi_valuetype type;
  void *p, *rsp;
  size_t len;
  char small[512];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_typeof(env, argv[0], &type));
  if (get_bytes(env, argv[0], &p, &len) != 0 || len >= sizeof small) {
    napi_throw_type_error(env, NULL, "echoNoBuf(u8 < 512 bytes)");
    return NULL;
  }
  memcpy(small, p, len);
  small[len] = 0;
  rsp = malloc(len ? len : 1);
  memcpy(rsp, small, len);
  free(rsp);
  CHECK(napi_create_uint32(env, (uint32_t)len, &out));
  return out;
}

static napi_value EchoInto(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  napi_valuetype type;
  void *p, *dst, *rsp;
  size_t len, cap;
  char small[512];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_typeof(env, argv[0], &type));
  if (get_bytes(env, argv[0], &p, &len) != 0 || len >= sizeof small ||
      get_bytes(env, argv[1], &dst, &cap) != 0 || cap < len) {
    napi_throw_type_error(env, NULL, "echoInto(u8 < 512 bytes, out)");
    return NULL;
  }
  memcpy(small, p, len);
  small[len] = 0;
  rsp = malloc(len ? len : 1);
  memcpy(rsp, small, len);
  memcpy(dst, rsp, len);
  free(rsp);
  CHECK(napi_create_uint32(env, (uint32_t)len, &out));
  return out;
}

#define POOL_SIZE 8192
static napi_ref pool_ref;
static char *pool_data;
static size_t pool_cur = POOL_SIZE;

static napi_value EchoPooled(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  void *p, *rsp, *dst;
  size_t len;
  char small[512];
  int fresh = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (get_bytes(env, argv[0], &p, &len) != 0 || len >= sizeof small) {
    napi_throw_type_error(env, NULL, "echoPooled(u8 < 512 bytes)");
    return NULL;
  }
  memcpy(small, p, len);
  small[len] = 0;
  rsp = malloc(len ? len : 1);
  memcpy(rsp, small, len);
  if (len > 4096) { /* big: its own Buffer */
    CHECK(napi_create_buffer_copy(env, len, rsp, &dst, &out));
    free(rsp);
    return out;
  }
  if (pool_cur + len > POOL_SIZE) {
    napi_value ab;
    void *data;
    CHECK(napi_create_arraybuffer(env, POOL_SIZE, &data, &ab));
    if (pool_ref) napi_delete_reference(env, pool_ref);
    CHECK(napi_create_reference(env, ab, 1, &pool_ref));
    pool_data = data;
    pool_cur = 0;
    fresh = 1;
  }
  memcpy(pool_data + pool_cur, rsp, len);
  free(rsp);
  CHECK(napi_create_uint32(env, (uint32_t)(fresh << 27 | pool_cur << 14 | len), &out));
  pool_cur += (len + 7) & ~(size_t)7;
  return out;
}

static napi_value Pool(napi_env env, napi_callback_info info) {
  napi_value ab;
  (void)info;
  CHECK(napi_get_reference_value(env, pool_ref, &ab));
  return ab;
}

static napi_value ArrayBuffer(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  uint32_t n;
  void *data;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_uint32(env, argv[0], &n));
  CHECK(napi_create_arraybuffer(env, n, &data, &out));
  return out;
}

static napi_value BufferCopy(napi_env env, napi_callback_info info) {
  static const char src[4096];
  size_t argc = 1;
  napi_value argv[1], out;
  uint32_t n;
  void *data;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_uint32(env, argv[0], &n));
  if (n > sizeof src) n = sizeof src;
  CHECK(napi_create_buffer_copy(env, n, src, &data, &out));
  return out;
}

static napi_value MakeCallback(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], recv, out;
  CHECK(napi_get_cb_info(env, info, &argc, argv, &recv, NULL));
  CHECK(napi_make_callback(env, NULL, recv, argv[0], 0, NULL, &out));
  return out;
}

struct job {
  napi_async_work work;
  napi_deferred deferred;
  char *req;
  size_t len;
  void *rsp;
};

static void Execute(napi_env env, void *data) {
  struct job *j = data;
  (void)env;
  j->rsp = malloc(j->len ? j->len : 1);
  memcpy(j->rsp, j->req, j->len);
}

static void Complete(napi_env env, napi_status status, void *data) {
  struct job *j = data;
  napi_value out;
  void *dst;
  (void)status;
  if (napi_create_buffer_copy(env, j->len, j->rsp, &dst, &out) == napi_ok)
    napi_resolve_deferred(env, j->deferred, out);
  napi_delete_async_work(env, j->work);
  free(j->rsp);
  free(j->req);
  free(j);
}

static napi_value EchoAsync(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], promise, name;
  void *p;
  size_t len;
  struct job *j;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (get_bytes(env, argv[0], &p, &len) != 0) {
    napi_throw_type_error(env, NULL, "echoAsync(u8)");
    return NULL;
  }
  j = calloc(1, sizeof *j);
  j->req = malloc(len + 1);
  memcpy(j->req, p, len);
  j->req[len] = 0;
  j->len = len;
  CHECK(napi_create_promise(env, &j->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "peer:echoAsync", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, Execute, Complete, j, &j->work));
  CHECK(napi_queue_async_work(env, j->work));
  return promise;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"noop", NULL, Noop, NULL, NULL, NULL, napi_default, NULL},
      {"echoSync", NULL, EchoSync, NULL, NULL, NULL, napi_default, NULL},
      {"echoNoBuf", NULL, EchoNoBuf, NULL, NULL, NULL, napi_default, NULL},
      {"echoInto", NULL, EchoInto, NULL, NULL, NULL, napi_default, NULL},
      {"echoPooled", NULL, EchoPooled, NULL, NULL, NULL, napi_default, NULL},
      {"pool", NULL, Pool, NULL, NULL, NULL, napi_default, NULL},
      {"arrayBuffer", NULL, ArrayBuffer, NULL, NULL, NULL, napi_default, NULL},
      {"bufferCopy", NULL, BufferCopy, NULL, NULL, NULL, napi_default, NULL},
      {"makeCallback", NULL, MakeCallback, NULL, NULL, NULL, napi_default, NULL},
      {"echoAsync", NULL, EchoAsync, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
