// library_wrap.h: class Library (binding), the JS face of one open()
// reference. JS thread only.
#pragma once

#include <napi.h>

#include "env_state.h"
#include "registry.h"

namespace dlhost {

class LibraryWrap : public Napi::ObjectWrap<LibraryWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit LibraryWrap(const Napi::CallbackInfo &info);
  ~LibraryWrap();  // finalizer: the safety net when release() was never called

  // The wrapper behind `v` when it is a Library of this environment, else null.
  static LibraryWrap *FromValue(Napi::Env env, Napi::Value v);
  const EntryPtr &entry() const { return entry_; }
  bool released() const { return released_; }

 private:
  Napi::Value State(const Napi::CallbackInfo &info);
  Napi::Value Has(const Napi::CallbackInfo &info);
  Napi::Value Release(const Napi::CallbackInfo &info);
  Napi::Value Pin(const Napi::CallbackInfo &info);
  // Drops the reference once (release(), finalizer, environment teardown).
  ReleaseResult Drop();
  static void OnEnvCleanup(void *self);

  EntryPtr entry_;
  bool released_ = true;
  CleanupHook hook_;
};

}  // namespace dlhost
