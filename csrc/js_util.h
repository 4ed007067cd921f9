// js_util.h: small N-API helpers shared by the JS wrappers. JS thread only.
#pragma once

#include <napi.h>

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

}  // namespace dlhost
