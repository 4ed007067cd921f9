// env_state.h: per-environment state (main thread or one worker). JS thread
// of that environment only.
//
// - EnvState is the environment's instance data (napi_set_instance_data):
//   what the wrappers need to know about their environment.
// - CleanupHook is one object's environment cleanup hook, as classic-level
//   does per database: when a worker or the process ends with the object
//   still open, the hook tears it down (never blocking, never calling JS); a
//   finalizer or an explicit close disarms it first.
#pragma once

#include <napi.h>

#include <cstddef>
#include <set>
#include <string>

namespace dlhost {

struct EnvState {
  // `class Library` of this environment, to check that an argument is one.
  Napi::FunctionReference library_class;
  // The longest Buffer this Node makes (buffer.constants.MAX_LENGTH, set by
  // lib/binding.ts through configure()): a longer answer is refused, freed
  // once, instead of failing inside napi_create_external_buffer.
  size_t max_body = size_t(1) << 32;
  // Private directories of this environment (the reload layer's copy
  // stores), removed when the environment goes (a terminated worker, or an
  // exit that skipped JS's own clean-up).
  std::set<std::string> dirs;

  static EnvState *Of(Napi::Env env) { return env.GetInstanceData<EnvState>(); }
  // Environment cleanup hook: removes `dirs`. Never calls JS.
  static void Cleanup(void *self);
};

class CleanupHook {
 public:
  using Fn = void (*)(void *);
  void Arm(napi_env env, Fn fn, void *arg) {
    if (armed_) return;
    env_ = env;
    fn_ = fn;
    arg_ = arg;
    armed_ = napi_add_env_cleanup_hook(env, &CleanupHook::Run, this) == napi_ok;
  }
  // Idempotent; a hook that already ran is not armed.
  void Disarm() {
    if (!armed_) return;
    armed_ = false;
    napi_remove_env_cleanup_hook(env_, &CleanupHook::Run, this);
  }
  ~CleanupHook() { Disarm(); }

 private:
  static void Run(void *self) {
    auto *h = static_cast<CleanupHook *>(self);
    h->armed_ = false;
    h->fn_(h->arg_);
  }
  napi_env env_ = nullptr;
  Fn fn_ = nullptr;
  void *arg_ = nullptr;
  bool armed_ = false;
};

}  // namespace dlhost
