// addon.cc: the module entry. Makes the environment's instance data and
// exports the classes, the functions and every layout constant (constants.h)
// that lib/binding.ts reads. JS thread only. Nothing includes this file.
#include <dlfcn.h>
#include <ftw.h>
#include <napi.h>
#include <unistd.h>

#include "channel_wrap.h"
#include "constants.h"
#include "env_state.h"
#include "include/dlhost.h"
#include "js_util.h"
#include "library_wrap.h"
#include "registry.h"
#include "runtime_wrap.h"

namespace dlhost {
namespace {

// Plugins resolve the host ABI by name at their dlopen. Node loads addons
// RTLD_LOCAL, so re-open ourselves RTLD_GLOBAL (no new mapping: NOLOAD).
void ExportHostSymbols() {
  static bool done = false;
  if (done) return;
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&dlhost_abi_version), &info) && info.dli_fname) {
    if (dlopen(info.dli_fname, RTLD_NOLOAD | RTLD_NOW | RTLD_GLOBAL)) done = true;
  }
}

Napi::Value Libraries(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::vector<Row> rows = Registry::Get().Snapshot();
  Napi::Array out = Napi::Array::New(env, rows.size());
  for (size_t i = 0; i < rows.size(); i++) out.Set(uint32_t(i), RowToJs(env, rows[i]));
  return out;
}

Napi::Value IsMapped(const Napi::CallbackInfo &info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "isMapped(path: string)");
  return Napi::Boolean::New(info.Env(), Registry::IsMapped(info[0].As<Napi::String>()));
}

// identify(path) -> the identity open() would give the file now.
Napi::Value Identify(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "identify(path: string)");
  Napi::Object o = Napi::Object::New(env);
  try {
    SetIdentity(o, Identity::Of(info[0].As<Napi::String>()));
  } catch (const LoadError &e) {
    ThrowLoadError(env, e);
  }
  return o;
}

// configure(maxBufferLength): what lib/binding.ts tells the addon once.
Napi::Value Configure(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "configure(maxBufferLength: number)");
  double n = info[0].As<Napi::Number>().DoubleValue();
  if (n >= 1) EnvState::Of(env)->max_body = size_t(n);
  return env.Undefined();
}

// trackDir(path, on): a private directory to remove with the environment.
Napi::Value TrackDir(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsBoolean())
    throw Napi::TypeError::New(env, "trackDir(path: string, on: boolean)");
  std::string dir = info[0].As<Napi::String>();
  EnvState *st = EnvState::Of(env);
  if (info[1].As<Napi::Boolean>())
    st->dirs.insert(dir);
  else
    st->dirs.erase(dir);
  return env.Undefined();
}

int RemoveEntry(const char *path, const struct stat *, int flag, struct FTW *) {
  if (flag == FTW_DP)
    rmdir(path);
  else
    unlink(path);
  return 0;
}

Napi::Object Constants(Napi::Env env) {
  Napi::Object c = Napi::Object::New(env);
  c.Set("SLOT_STRIDE", double(kSlotStride));
  c.Set("SLOT_INLINE", double(kSlotInline));
  c.Set("CHUNK_SLOTS", double(kChunkSlots));
  c.Set("CHUNK_BITS", double(kChunkBits));
  c.Set("ABORTED_LEN", double(kAbortedLen));
  c.Set("BIG_OFFSET", double(kBigOffset));
  c.Set("SYNC_BIG_OFFSET", double(kSyncBigOffset));
  c.Set("TOO_LARGE_OFFSET", double(kTooLargeOffset));
  c.Set("SYNC_TOO_LARGE_OFFSET", double(kSyncTooLargeOffset));
  c.Set("SUBMIT_CLOSED", double(kSubmitClosed));
  c.Set("TASK_STATE_EXPORT", double(kTaskStateExport));
  c.Set("TASK_STATE_IMPORT", double(kTaskStateImport));
  c.Set("RC_NO_STATE_ENTRY", double(kRcNoStateEntry));
  c.Set("HIST_SUB_BITS", double(kHistSubBits));
  c.Set("HIST_MIN_LOG", double(kHistMinLog));
  c.Set("HIST_MAX_LOG", double(kHistMaxLog));
  c.Set("DEFAULT_MAX_MESSAGES", double(kDefaultMaxMessages));
  c.Set("MAX_MESSAGE_BYTES", double(kMaxMessageBytes));
  c.Set("ABI_HOST", double(Abi::kHost));
  c.Set("ABI_NATIVE", double(Abi::kNative));
  c.Set("ABI_LUA", double(Abi::kLua));
  c.Set("OPEN_PIN", double(kPin));
  c.Set("OPEN_GLOBAL", double(kGlobal));
  c.Set("OPEN_LAZY", double(kLazy));
  c.Set("OPEN_PRIVATE", double(kPrivate));
  c.Set("DEFAULT_SPIN_NS", double(kDefaultSpinNs));
  c.Set("DEFAULT_MAX_QUEUE", double(kDefaultMaxQueue));
  c.Set("MAX_MAX_QUEUE", double(kMaxMaxQueue));
  c.Set("DEFAULT_UNLOAD_TIMEOUT_MS", double(kDefaultUnloadTimeoutMs));
  c.Set("DEFAULT_SETTLE_MS", double(kDefaultSettleMs));
  c.Set("ABI_VERSION", double(DLHOST_ABI_VERSION));
  c.Freeze();
  return c;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ExportHostSymbols();
  auto *state = new EnvState();
  env.SetInstanceData(state);  // deleted when the environment goes
  Napi::Function library = LibraryWrap::Init(env);
  state->library_class = Napi::Persistent(library);
  exports.Set("Library", library);
  exports.Set("Runtime", RuntimeWrap::Init(env));
  exports.Set("Channel", ChannelWrap::Init(env));
  exports.Set("libraries", Napi::Function::New<Libraries>(env, "libraries"));
  exports.Set("isMapped", Napi::Function::New<IsMapped>(env, "isMapped"));
  exports.Set("identify", Napi::Function::New<Identify>(env, "identify"));
  exports.Set("configure", Napi::Function::New<Configure>(env, "configure"));
  exports.Set("trackDir", Napi::Function::New<TrackDir>(env, "trackDir"));
  napi_add_env_cleanup_hook(env, &EnvState::Cleanup, state);
  exports.Set("abiVersion", Napi::Number::New(env, DLHOST_ABI_VERSION));
  exports.Set("constants", Constants(env));
  return exports;
}

}  // namespace

void EnvState::Cleanup(void *self) {
  auto *st = static_cast<EnvState *>(self);
  // Depth first, never following a link out of the directory.
  for (const std::string &dir : st->dirs) nftw(dir.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
  st->dirs.clear();
}

}  // namespace dlhost

static Napi::Object DlhostInit(Napi::Env env, Napi::Object exports) {
  return dlhost::Init(env, exports);
}
NODE_API_MODULE(dlhost, DlhostInit)
