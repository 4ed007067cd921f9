// The JS face of one open() reference: class Library in the binding.
#pragma once

#include <napi.h>

#include "addon.h"

namespace dlhost {

class LibraryWrap : public Napi::ObjectWrap<LibraryWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit LibraryWrap(const Napi::CallbackInfo &info);
  ~LibraryWrap();  // finalizer: the safety net when release() was never called

  const EntryPtr &entry() const { return ref_->entry; }
  bool released() const { return ref_->released; }

 private:
  Napi::Value State(const Napi::CallbackInfo &info);
  Napi::Value Has(const Napi::CallbackInfo &info);
  Napi::Value Release(const Napi::CallbackInfo &info);
  Napi::Value Pin(const Napi::CallbackInfo &info);
  std::shared_ptr<LibRef> ref_;
  Addon *addon_;
};

}  // namespace dlhost
