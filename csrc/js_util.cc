// js_util.cc: JS thread only.
#include "js_util.h"

#include <cstring>

namespace dlhost {

void ThrowCoded(Napi::Env env, const std::string &code, const std::string &message,
                const std::string &loader_message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", code);
  if (!loader_message.empty()) err.Set("loaderMessage", loader_message);
  throw err;
}

void ThrowLoadError(Napi::Env env, const LoadError &e) {
  Napi::Error err = Napi::Error::New(env, e.message);
  if (!e.code.empty()) err.Set("code", e.code);
  if (e.sys_errno != 0) {
    const char *name = strerrorname_np(e.sys_errno);  // glibc >= 2.32
    err.Set("errnoCode", name ? name : "EIO");
  }
  if (!e.loader_message.empty()) err.Set("loaderMessage", e.loader_message);
  throw err;
}

void SetIdentity(Napi::Object o, const Identity &id) {
  Napi::Env env = o.Env();
  o.Set("realPath", id.real_path);
  o.Set("dev", double(id.dev));
  o.Set("ino", double(id.ino));
  o.Set("size", double(id.size));
  o.Set("mtimeMs", double(id.mtime_ns) / 1e6);
  o.Set("mtimeNs", Napi::BigInt::New(env, id.mtime_ns));
  o.Set("key", id.Key());
}

Napi::Object RowToJs(Napi::Env env, const Row &row) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("serial", double(row.serial));
  SetIdentity(o, row.id);
  o.Set("refs", double(row.refs));
  o.Set("runtimes", double(row.runtimes));
  o.Set("pinned", row.pinned);
  o.Set("mapped", row.mapped);
  o.Set("dlclosed", row.dlclosed);
  o.Set("threadsStuck", row.threads_stuck);
  return o;
}

void CallJs(napi_env env, napi_async_context ctx, napi_value recv, napi_value fn,
            std::initializer_list<napi_value> args) {
  napi_value result;
  if (napi_make_callback(env, ctx, recv, fn, args.size(), args.begin(), &result) == napi_ok) return;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) throw EnvGone();
  napi_value exc;
  napi_get_and_clear_last_exception(env, &exc);
  napi_fatal_exception(env, exc);
}

Napi::Value SharedCounter(Napi::Env env, Napi::ObjectReference &ref, int32_t **data) {
  if (ref.IsEmpty()) {
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, sizeof(int32_t));
    ref = Napi::Persistent(Napi::Object(Napi::Int32Array::New(env, 1, ab, 0)));
    *data = static_cast<int32_t *>(ab.Data());
  }
  return ref.Value();
}

}  // namespace dlhost
