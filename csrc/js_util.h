// js_util.h: small N-API helpers shared by the JS wrappers. JS thread only.
#pragma once

#include <napi.h>

#include <initializer_list>
#include <string>

#include "registry.h"

namespace dlhost {

// Throws a JS Error with `code` and `loaderMessage`, which lib/errors.ts turns
// into a DlhostError.
[[noreturn]] void ThrowCoded(Napi::Env env, const std::string &code, const std::string &message,
                             const std::string &loader_message = "");
// A LoadError as a JS Error: its code, or its errno as `errnoCode` ('ENOENT')
// for lib/errors.ts to map.
[[noreturn]] void ThrowLoadError(Napi::Env env, const LoadError &e);

// The identity fields (realPath, dev, ino, size, mtimeMs, mtimeNs, key) onto o.
void SetIdentity(Napi::Object o, const Identity &id);
Napi::Object RowToJs(Napi::Env env, const Row &row);

// The environment can no longer run JS (a terminating worker).
struct EnvGone {};

// Calls a TypeScript callback with `recv` as this. A JS exception out of it
// (a throwing listener, or a throw from a nextTick callback that Node ran on
// the way out) is user code failing: it becomes an uncaughtException, as in
// any other callback, and the caller goes on. Any other failure throws
// EnvGone.
void CallJs(napi_env env, napi_async_context ctx, napi_value recv, napi_value fn,
            std::initializer_list<napi_value> args);

// A one-element Int32Array shared with TypeScript (made once, kept in `ref`);
// `*data` points at its element.
Napi::Value SharedCounter(Napi::Env env, Napi::ObjectReference &ref, int32_t **data);

}  // namespace dlhost
