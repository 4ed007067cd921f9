// library_wrap.cc: class Library (binding). JS thread only.
#include "library_wrap.h"

#include "js_util.h"

namespace dlhost {

Napi::Function LibraryWrap::Init(Napi::Env env) {
  return DefineClass(
      env, "Library",
      {InstanceMethod<&LibraryWrap::State>("state"), InstanceMethod<&LibraryWrap::Has>("has"),
       InstanceMethod<&LibraryWrap::Release>("release"), InstanceMethod<&LibraryWrap::Pin>("pin")});
}

LibraryWrap *LibraryWrap::FromValue(Napi::Env env, Napi::Value v) {
  EnvState *st = EnvState::Of(env);
  if (!v.IsObject() || !st || st->library_class.IsEmpty()) return nullptr;
  Napi::Object o = v.As<Napi::Object>();
  if (!o.InstanceOf(st->library_class.Value())) return nullptr;
  return Unwrap(o);
}

LibraryWrap::LibraryWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<LibraryWrap>(info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "Library(path: string, flags: number)");
  std::string path = info[0].As<Napi::String>();
  uint32_t flags = info[1].As<Napi::Number>().Uint32Value();
  try {
    entry_ = Registry::Get().Open(path, flags);
  } catch (const LoadError &e) {
    ThrowLoadError(env, e);
  }
  released_ = false;
  hook_.Arm(env, &LibraryWrap::OnEnvCleanup, this);
  Napi::Object self = info.This().As<Napi::Object>();
  SetIdentity(self, entry_->id);
  self.Set("serial", double(entry_->serial));
}

LibraryWrap::~LibraryWrap() { Drop(); }

void LibraryWrap::OnEnvCleanup(void *self) { static_cast<LibraryWrap *>(self)->Drop(); }

ReleaseResult LibraryWrap::Drop() {
  hook_.Disarm();
  if (released_) return {};
  released_ = true;
  return Registry::Get().Release(entry_);
}

Napi::Value LibraryWrap::State(const Napi::CallbackInfo &info) {
  return RowToJs(info.Env(), Registry::Get().RowOf(entry_));
}

Napi::Value LibraryWrap::Has(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "has(symbol: string)");
  if (released_) ThrowCoded(env, "ERR_RELEASED", "the library was released");
  std::string name = info[0].As<Napi::String>();
  return Napi::Boolean::New(env, Registry::Get().Symbol(entry_, name.c_str()) != nullptr);
}

Napi::Value LibraryWrap::Release(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (released_) return env.Null();
  ReleaseResult r = Drop();
  Napi::Object out = Napi::Object::New(env);
  out.Set("dlclosed", r.dlclosed);
  out.Set("mapped", r.mapped);
  return out;
}

Napi::Value LibraryWrap::Pin(const Napi::CallbackInfo &info) {
  if (released_) ThrowCoded(info.Env(), "ERR_RELEASED", "the library was released");
  Registry::Get().Pin(entry_);
  return info.Env().Undefined();
}

}  // namespace dlhost
