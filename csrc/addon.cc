// Module entry: per-environment instance data and the cleanup hook.
#include "addon.h"

#include <dlfcn.h>

#include "include/dlhost.h"
#include "library_wrap.h"
#include "runtime.h"

namespace dlhost {

void ThrowCoded(Napi::Env env, const std::string &code, const std::string &message,
                const std::string &loader_message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", code);
  if (!loader_message.empty()) err.Set("loaderMessage", loader_message);
  throw err;
}

Napi::Object RowToJs(Napi::Env env, const Row &row) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("serial", double(row.serial));
  o.Set("realPath", row.id.real_path);
  o.Set("dev", double(row.id.dev));
  o.Set("ino", double(row.id.ino));
  o.Set("size", double(row.id.size));
  o.Set("mtimeMs", double(row.id.mtime_ns) / 1e6);
  o.Set("key", std::to_string(row.id.dev) + ":" + std::to_string(row.id.ino) + ":" +
                   std::to_string(row.id.size) + ":" + std::to_string(row.id.mtime_ns));
  o.Set("refs", double(row.refs));
  o.Set("runtimes", double(row.runtimes));
  o.Set("pinned", row.pinned);
  o.Set("mapped", row.mapped);
  o.Set("dlclosed", row.dlclosed);
  return o;
}

// Plugins resolve the host ABI by name at their dlopen. Node loads addons
// RTLD_LOCAL, so re-open ourselves RTLD_GLOBAL (no new mapping: NOLOAD).
static void ExportHostSymbols() {
  static bool done = false;
  if (done) return;
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&dlhost_abi_version), &info) && info.dli_fname) {
    if (dlopen(info.dli_fname, RTLD_NOLOAD | RTLD_NOW | RTLD_GLOBAL)) done = true;
  }
}

Addon::Addon(Napi::Env env, Napi::Object exports) : env_(env) {
  ExportHostSymbols();
  DefineAddon(exports,
              {InstanceMethod<&Addon::Libraries>("libraries"),
               InstanceMethod<&Addon::IsMapped>("isMapped"),
               InstanceValue("Library", LibraryWrap::Init(env)),
               InstanceValue("Runtime", RuntimeWrap::Init(env)),
               InstanceValue("abiVersion", Napi::Number::New(env, DLHOST_ABI_VERSION))});
  napi_add_env_cleanup_hook(env, CleanupHook, this);
}

Addon::~Addon() {
  napi_remove_env_cleanup_hook(env_, CleanupHook, this);
  Teardown();
}

void Addon::CleanupHook(void *arg) { static_cast<Addon *>(arg)->Teardown(); }

void Addon::Teardown() {
  if (torn_down) return;
  torn_down = true;
  // Runtimes first: they drain and leave their libraries (bounded wait).
  for (RuntimeWrap *rt : runtimes) rt->TeardownFromEnv();
  runtimes.clear();
  for (auto &ref : libs) {
    if (ref->released) continue;
    ref->released = true;
    Registry::Get().Release(ref->entry);
  }
  libs.clear();
}

Napi::Value Addon::Libraries(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<Row> rows = Registry::Get().Snapshot();
  Napi::Array out = Napi::Array::New(env, rows.size());
  for (size_t i = 0; i < rows.size(); i++) out.Set(uint32_t(i), RowToJs(env, rows[i]));
  return out;
}

Napi::Value Addon::IsMapped(const Napi::CallbackInfo &info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "isMapped(path: string)");
  return Napi::Boolean::New(info.Env(), Registry::IsMapped(info[0].As<Napi::String>()));
}

}  // namespace dlhost

using DlhostAddon = dlhost::Addon;
NODE_API_ADDON(DlhostAddon)
