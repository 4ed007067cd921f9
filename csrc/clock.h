// clock.h: the one monotonic clock of the native code (any thread).
#ifndef DLHOST_CLOCK_H
#define DLHOST_CLOCK_H

#include <chrono>
#include <cstdint>

namespace dlhost {

// Nanoseconds on CLOCK_MONOTONIC (steady_clock; a vDSO read, ~25 ns).
inline uint64_t monotonic_ns() noexcept {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace dlhost

#endif  // DLHOST_CLOCK_H
