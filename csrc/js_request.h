// js_request.h: a request as JS handed it to call()/callSync(). JS thread only.
#pragma once

#include <napi.h>

#include <cstring>

namespace dlhost {

// A string (UTF-8 encoded when copied) or the bytes of a TypedArray
// (borrowed: valid during the N-API call only).
struct JsRequest {
  napi_value str = nullptr;
  const char *bytes = nullptr;
  size_t len = 0;
  // Writes the len bytes and the NUL the ABI promises after them.
  void CopyTo(napi_env env, char *dst) const {
    if (str) {
      size_t copied = 0;
      napi_get_value_string_utf8(env, str, dst, len + 1, &copied);
    } else if (len) {
      memcpy(dst, bytes, len);
    }
    dst[len] = 0;
  }
};

inline JsRequest ReadRequest(Napi::Env env, napi_value v) {
  JsRequest r;
  napi_valuetype type;
  napi_typeof(env, v, &type);
  if (type == napi_string) {
    r.str = v;
    napi_get_value_string_utf8(env, v, nullptr, 0, &r.len);
    return r;
  }
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  if (!is_ta) throw Napi::TypeError::New(env, "request must be a string or a Uint8Array");
  napi_typedarray_type tt;
  size_t n, off;
  void *p;
  napi_value ab;
  napi_get_typedarray_info(env, v, &tt, &n, &p, &ab, &off);
  size_t elem =
      (tt == napi_int8_array || tt == napi_uint8_array || tt == napi_uint8_clamped_array)     ? 1
      : (tt == napi_int16_array || tt == napi_uint16_array)                                   ? 2
      : (tt == napi_float64_array || tt == napi_bigint64_array || tt == napi_biguint64_array) ? 8
                                                                                              : 4;
  r.bytes = static_cast<const char *>(p);
  r.len = n * elem;
  return r;
}

}  // namespace dlhost
