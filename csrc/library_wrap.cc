// class Library (binding): JS thread only.
#include "library_wrap.h"

namespace dlhost {

Napi::Function LibraryWrap::Init(Napi::Env env) {
  return DefineClass(env, "Library",
                     {InstanceMethod<&LibraryWrap::State>("state"),
                      InstanceMethod<&LibraryWrap::Has>("has"),
                      InstanceMethod<&LibraryWrap::Release>("release"),
                      InstanceMethod<&LibraryWrap::Pin>("pin")});
}

LibraryWrap::LibraryWrap(const Napi::CallbackInfo &info)
    : Napi::ObjectWrap<LibraryWrap>(info), addon_(Addon::Of(info.Env())) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsNumber())
    throw Napi::TypeError::New(env, "Library(path: string, flags: number)");
  std::string path = info[0].As<Napi::String>();
  uint32_t flags = info[1].As<Napi::Number>().Uint32Value();
  ref_ = std::make_shared<LibRef>();
  try {
    ref_->entry = Registry::Get().Open(path, flags);
  } catch (const LoadError &e) {
    ref_->released = true;
    ThrowCoded(env, e.code, e.message, e.loader_message);
  }
  addon_->libs.insert(ref_);
  const Identity &id = ref_->entry->id;
  Napi::Object self = info.This().As<Napi::Object>();
  self.Set("realPath", id.real_path);
  self.Set("dev", double(id.dev));
  self.Set("ino", double(id.ino));
  self.Set("size", double(id.size));
  self.Set("mtimeMs", double(id.mtime_ns) / 1e6);
  self.Set("key", std::to_string(id.dev) + ":" + std::to_string(id.ino) + ":" +
                      std::to_string(id.size) + ":" + std::to_string(id.mtime_ns));
  self.Set("serial", double(ref_->entry->serial));
}

LibraryWrap::~LibraryWrap() {
  if (!ref_ || ref_->released) return;
  ref_->released = true;
  Registry::Get().Release(ref_->entry);
  if (!addon_->torn_down) addon_->libs.erase(ref_);
}

Napi::Value LibraryWrap::State(const Napi::CallbackInfo &info) {
  return RowToJs(info.Env(), Registry::Get().RowOf(ref_->entry));
}

Napi::Value LibraryWrap::Has(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "has(symbol: string)");
  if (ref_->released) ThrowCoded(env, "ERR_RELEASED", "the library was released");
  std::string name = info[0].As<Napi::String>();
  return Napi::Boolean::New(env, Registry::Get().Symbol(ref_->entry, name.c_str()) != nullptr);
}

Napi::Value LibraryWrap::Release(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (ref_->released) return env.Null();
  ref_->released = true;
  addon_->libs.erase(ref_);
  ReleaseResult r = Registry::Get().Release(ref_->entry);
  Napi::Object out = Napi::Object::New(env);
  out.Set("dlclosed", r.dlclosed);
  out.Set("mapped", r.mapped);
  return out;
}

Napi::Value LibraryWrap::Pin(const Napi::CallbackInfo &info) {
  if (ref_->released) ThrowCoded(info.Env(), "ERR_RELEASED", "the library was released");
  Registry::Get().Pin(ref_->entry);
  return info.Env().Undefined();
}

}  // namespace dlhost
