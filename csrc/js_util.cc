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

}  // namespace dlhost
