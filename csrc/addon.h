// Per-environment state of the addon (instance data): the library references
// and runtimes this Node environment (main thread or a worker) holds, released
// by an environment cleanup hook when the environment goes away.
#pragma once

#include <napi.h>

#include <memory>
#include <unordered_set>

#include "library.h"

namespace dlhost {

// One open() reference held by a JS Library object. JS thread only.
struct LibRef {
  EntryPtr entry;
  bool released = false;
};

class RuntimeWrap;

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports);
  ~Addon();

  static Addon *Of(Napi::Env env) { return env.GetInstanceData<Addon>(); }

  // Releases every reference and stops every runtime of this environment.
  // Idempotent; runs from the cleanup hook and from the destructor.
  void Teardown();

  std::unordered_set<std::shared_ptr<LibRef>> libs;
  std::unordered_set<RuntimeWrap *> runtimes;
  bool torn_down = false;

 private:
  Napi::Value Libraries(const Napi::CallbackInfo &info);
  Napi::Value IsMapped(const Napi::CallbackInfo &info);
  static void CleanupHook(void *arg);
  napi_env env_;
};

// Throws a JS Error with `code` and `loaderMessage`, which lib/errors.ts turns
// into a DlhostError.
[[noreturn]] void ThrowCoded(Napi::Env env, const std::string &code,
                             const std::string &message,
                             const std::string &loader_message = "");

Napi::Object RowToJs(Napi::Env env, const Row &row);

}  // namespace dlhost
